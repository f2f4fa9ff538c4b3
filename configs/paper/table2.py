"""The paper's Table 2 as variants of one file (the recipe: configs/paper/recipe.py): the
data-side and alignment-stage defenses against STAR-DSS.

    python -m dss.train --config configs/paper/table2.py:star_dss,harmful=/data/harmful100.jsonl
    ... :sft | :safeinstr | :seal | :lisa             (method)
    ... ,alignment=/data/safety.jsonl                  (their safety / alignment data instead of the stand-in)
    ... ,benign10 | ,benign1 | ,llama_guard            (as in table1.py)

`python -m dss.tables --layout table2 <workdirs...>` lays the results out in the paper's rows.
"""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("paper_recipe", Path(__file__).with_name("recipe.py"))
recipe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recipe)

METHODS = ("sft", "safeinstr", "seal", "lisa", "star_dss")


def get_config(arg: str = "star_dss"):
    """`arg`: comma-separated variant names, plus `harmful=<path>` / `alignment=<path>`."""
    method, options, settings = recipe.parse(arg, "table2", METHODS)
    return recipe.config("table2", method, options, settings)
