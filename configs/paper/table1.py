"""The paper's Table 1 as variants of one file (the recipe: configs/paper/recipe.py).

    python -m dss.train --config configs/paper/table1.py:star_dss,harmful=/data/harmful100.jsonl
    ... :sft | :rs | :deep_token | :kl_only           (objective)
    ... :vaccine_align, then :vaccine                 (Vaccine: alignment stage, then finetuning its export)
    ... :safelora                                     (LoRA finetuning + SafeLoRA projection)
    ... :star_dss,llama_guard                          (Llama Guard 3 8B instead of Granite Guardian)
    ... :star_dss,benign10 | :sft,benign1              (GSM8K mixed with 10% / 1% harmful examples)
    ... ,alignment=/data/align.jsonl                   (Vaccine's alignment data instead of the stand-in)

`python -m dss.tables --layout table1 <workdirs...>` lays the results out in the paper's rows.
"""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("paper_recipe", Path(__file__).with_name("recipe.py"))
recipe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recipe)

METHODS = ("sft", "vaccine_align", "vaccine", "safelora", "rs", "deep_token", "star_dss", "kl_only")


def get_config(arg: str = "star_dss"):
    """`arg`: comma-separated variant names, plus `harmful=<path>` / `alignment=<path>`."""
    method, options, settings = recipe.parse(arg, "table1", METHODS)
    return recipe.config("table1", method, options, settings)
