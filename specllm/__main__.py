"""`python -m specllm`: the same as the `specllm` command."""

from specllm.cli import main

main()
