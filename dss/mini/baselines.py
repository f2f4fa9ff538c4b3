"""Every method row of the miniature: a registered method (`dss.methods`) with the preset
`configs/paper/recipe.py` gives it, on the scenario's SFT recipe, plus the rows that vary one
(LoRA-SFT, the ablations).

What the paper's presets set cannot always apply to a tiny policy on 100 rows; those settings
are scaled the way recipe.py scales Lisa's (keep the official proportion), listed in `SCALED`
and in docs/mini.md. Nothing here is tuned on a result.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dss import checks, methods

WHOLE_RESPONSE = 1 << 62  # a STAR chunk no response reaches: one score per response (static shaping)

SCALED = {
    # recipe.py projects dss's default `safelora.num_layers` (10) of Llama-3.2-1B's 32 adapted
    # modules (16 layers x q, v); the 96 x 2 policy has 4 (2 layers x q, v): the same share is 1.
    # The 128 x 3 policy has 6, whose share would be 2: run 2 (docs/mini.md) kept 1 (issue #21)
    "safelora": {"safelora.num_layers": 1},
    # the miniature's steps hold a whole batch (micro = global), SEAL's selector steps too
    "seal": {"seal.micro_batch": 32},
}
"""Per method, the settings the miniature changes on top of the method's own preset."""


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the miniature's tables: a registered method and what the row changes on it."""

    method: str  # a name in dss.methods' registry
    label: str  # the row's name in table.md and the figures
    chunk_size: int | None = None  # STAR chunk size in words (None: the recipe's)
    robust: bool = False  # STAR scored by the robust guardrail (the control arm)


VARIANTS = {
    "lora_sft": Row("lora", "LoRA-SFT"),  # SafeLoRA's run without its projection
    "star_static": Row("star_dss", "STAR-DSS static (whole response)", chunk_size=WHOLE_RESPONSE),
    "star_c1": Row("star_dss", "STAR-DSS chunk 1", chunk_size=1),
    "star_c20": Row("star_dss", "STAR-DSS chunk 20", chunk_size=20),
    "rs_robust": Row("rs", "RS, robust guardrail", robust=True),
    "star_robust": Row("star_dss", "STAR-DSS, robust guardrail", robust=True),
}
"""The rows that are not a method's own: the names the miniature gives them."""

SAFETY_CONSUMERS = ("safeinstr", "seal", "lisa")
"""Methods that take Table 2's safety data their own way; every other method gets it as data."""


def row(name: str) -> Row:
    """The row called `name`: a variant, or a registered method as its preset sets it."""
    if name in VARIANTS:
        return VARIANTS[name]
    return Row(name, methods.by_name(name).label)


def label(name: str) -> str:
    return "initial" if name == "initial" else row(name).label


def scores_star(name: str) -> bool:
    """Whether the row's objective reads a STAR file."""
    cls = methods.by_name(row(name).method)
    return issubclass(cls, methods.Objective) and cls.scores_star


def vaccine_align_dir(runs: Path, seed: int) -> Path:
    """Vaccine's alignment stage of one seed, shared by that seed's scenarios."""
    return runs / "vaccine_align" / f"s{seed}"


def set_keys(c, overrides: dict) -> None:
    """Set each dotted key of `overrides` on config `c`."""
    for key, value in overrides.items():
        parent, _, leaf = key.rpartition(".")
        checks.value(c, parent)[leaf] = value


def configure(c, name: str, preset: methods.Preset, guard_robust: str) -> None:
    """Set row `name` on the finetuning config `c` (already the SFT recipe of a scenario)."""
    r = row(name)
    methods.configure(c, r.method, preset)
    set_keys(c, SCALED.get(r.method, {}))
    if r.chunk_size is not None:
        c.star.chunk_size = r.chunk_size
    if r.robust:
        c.guardrail.paths = [guard_robust]
