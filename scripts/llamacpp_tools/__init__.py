"""Helpers of scripts/compare-llama-cpp and scripts/build-llama-cpp (not part of the specllm package).

    build.py     builds llama.cpp's own programs from the llama-cpp-python sdist specllm runs on
    programs.py  the configurations compared, their command lines, and reading their timings
    report.py    per-category means, paired ratios, the table and the JSON document
    util.py      the error type and log helpers the others share
"""
