"""`specllm bench`'s core: which drafter and which k pay on this machine, for these prompts?

- sweep.py    the configurations: plain decoding (the baseline), n-gram lookup and each draft
              model at each k, auto mode with each draft;
- run.py      runs them on every prompt through `Engine`, as `specllm generate` would;
- costs.py    the cost model: what each run should have cost, and the best k it predicts;
- results.py  one row per configuration and group of prompts; JSON and CSV;
- padding.py  prompts padded to a context length (--context-lengths).
"""

from .costs import MeasuredCosts, best_k_by_model, conditional_acceptance, predicted_speedup, prediction_error
from .padding import PreparedPrompt
from .results import ROW_FIELDS, BenchResult, Totals, make_rows, model_best_ks, refused_row, result_json, write_csv
from .run import PROMPT_MARK, Bench, BenchSettings, run_bench
from .sweep import ALL_CATEGORIES, DEFAULT_KS, BenchConfig, short_name, sweep

__all__ = [
    "ALL_CATEGORIES", "DEFAULT_KS", "PROMPT_MARK", "ROW_FIELDS", "Bench", "BenchConfig", "BenchResult", "BenchSettings",
    "MeasuredCosts", "PreparedPrompt", "Totals", "best_k_by_model", "conditional_acceptance", "make_rows",
    "model_best_ks", "predicted_speedup", "prediction_error", "refused_row", "result_json", "run_bench", "short_name",
    "sweep", "write_csv",
]
