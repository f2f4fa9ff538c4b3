"""Every method row of the miniature as a preset: config overrides on the scenario's SFT recipe.

One dict (`PRESETS`, method -> {dotted config key: value}) so that moving to a method registry
is a one-for-one swap. Values may name the run's paths as "{alignment}" (the world's alignment /
safety data), "{base}" (the unaligned base policy), "{vaccine}" (this seed's Vaccine alignment
export) and "{guard_robust}" (the robust guardrail); `configure` fills them in.

Each baseline is set as `configs/paper/recipe.py` sets it for the paper's tables, on the
miniature's recipe (`scenarios.Recipe`); the settings that cannot apply to the miniature are
scaled the way recipe.py scales Lisa's (keep the official proportion) and listed in docs/mini.md.
"""

from __future__ import annotations

from pathlib import Path

WHOLE_RESPONSE = 1 << 62  # a STAR chunk no response reaches: one score per response (static shaping)
LORA_LR_FACTOR = 20  # recipe.py: LoRA at 1e-4 where full finetuning is at 5e-6
SEAL_GLOBAL_BATCH = 32  # recipe.py: 64 would give one selector step per epoch on 100 harmful rows
LISA_STEPS = (1, 9)  # recipe.py: the official 1:9 split; the official 100/900 outlasts these runs
VACCINE_EPOCHS = 10  # recipe.py's alignment stage: 10 epochs on the alignment data, rho 2 (the default)
# recipe.py projects dss's default `safelora.num_layers` (10) of Llama-3.2-1B's 32 adapted modules
# (16 layers x q, v); the policy has 4 (2 layers x q, v): the same share is round(4 * 10 / 32) = 1.
SAFELORA_NUM_LAYERS = 1

_LORA = {"objective.name": "sft", "lora.enabled": True, "train.lr": "{lora_lr}", "train.min_lr": "{lora_min_lr}"}

PRESETS = {
    "sft": {"objective.name": "sft"},
    "rs": {"objective.name": "rs"},
    "deep_token": {"objective.name": "deep_token"},
    "kl_only": {"objective.name": "kl_only"},
    "star_dss": {"objective.name": "star_dss"},
    "vaccine": {"objective.name": "sft", "model.path": "{vaccine}"},
    "lora_sft": _LORA,
    "safelora": {**_LORA, "safelora.enabled": True, "safelora.base_path": "{base}",
                 "safelora.num_layers": SAFELORA_NUM_LAYERS},
    "safeinstr": {"objective.name": "sft", "safeinstr.enabled": True, "safeinstr.path": "{alignment}"},
    "seal": {"objective.name": "sft", "seal.enabled": True,
             "seal.safe_sources": ({"path": "{alignment}", "name": "alignment"},),
             "seal.global_batch": SEAL_GLOBAL_BATCH, "seal.micro_batch": SEAL_GLOBAL_BATCH},
    "lisa": {"objective.name": "sft", "lisa.enabled": True,
             "lisa.sources": ({"path": "{alignment}", "name": "alignment"},),
             "lisa.alignment_steps": LISA_STEPS[0], "lisa.finetune_steps": LISA_STEPS[1]},
    # ablations: static shaping, chunk sizes, the robust guardrail
    "star_static": {"objective.name": "star_dss", "star.chunk_size": WHOLE_RESPONSE},
    "star_c1": {"objective.name": "star_dss", "star.chunk_size": 1},
    "star_c20": {"objective.name": "star_dss", "star.chunk_size": 20},
    "rs_robust": {"objective.name": "rs", "guardrail.paths": ["{guard_robust}"]},
    "star_robust": {"objective.name": "star_dss", "guardrail.paths": ["{guard_robust}"]},
}

VACCINE_ALIGNMENT = {"objective.name": "sft", "vaccine.enabled": True, "vaccine.rho": 2.0,
                     "train.epochs": VACCINE_EPOCHS, "data.sources": [{"path": "{alignment}", "name": "alignment"}],
                     "data.size": 0, "data.attack.response_prefix": "", "data.attack.response_suffix": ""}
"""Vaccine's alignment stage (recipe.py's `vaccine_align`): perturbation-aware SFT of the aligned
policy on the alignment data alone, no attack."""

SAFETY_CONSUMERS = ("safeinstr", "seal", "lisa")
"""Methods that take Table 2's safety data their own way; every other method gets it as data."""


def vaccine_align_dir(runs: Path, seed: int) -> Path:
    """Vaccine's alignment stage of one seed, shared by that seed's scenarios."""
    return runs / "vaccine_align" / f"s{seed}"


def _fill(value, paths: dict):
    if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
        return paths[value[1:-1]]
    if isinstance(value, (list, tuple)):
        return type(value)(_fill(v, paths) for v in value)
    if isinstance(value, dict):
        return {k: _fill(v, paths) for k, v in value.items()}
    return value


def apply(c, overrides: dict, paths: dict) -> None:
    """Set each dotted key of `overrides` on config `c`, with the run's paths filled in."""
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = c
        for p in parents:
            node = node[p]
        node[leaf] = _fill(value, paths)


def configure(c, method: str, paths: dict) -> None:
    """Set `method`'s preset on the finetuning config `c` (already the SFT recipe of a scenario)."""
    if method not in PRESETS:
        raise ValueError(f"unknown method {method!r} (one of {', '.join(PRESETS)})")
    apply(c, PRESETS[method], paths)
