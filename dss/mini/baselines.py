"""The paper's other defences in the miniature: SafeInstr, SEAL, Lisa, Vaccine, SafeLoRA.

Each is set as `configs/paper/recipe.py` sets it for the paper's tables, on the miniature's
finetuning recipe (`scenarios.Recipe`) and with the world's alignment data (`world.alignment_rows`:
harmful prompts with refusals, disjoint from the evaluation and scenario prompts) where the paper
uses its stand-in set. Defaults are kept unless they cannot apply to the miniature; the two that
cannot are scaled the way recipe.py scales Lisa's (docs/mini.md lists every choice).
"""

from __future__ import annotations

from pathlib import Path

METHODS = ("safeinstr", "seal", "lisa", "vaccine", "safelora")
OBJECTIVE = {"lisa": "lisa"}  # the others finetune with SFT (Vaccine's SFT is from its aligned model)

SEAL_GLOBAL_BATCH = 32  # recipe.py: 64 would give one selector step per epoch on 100 harmful rows
LISA_STEPS = (1, 9)  # recipe.py: the official 1:9 split; the official 100/900 outlasts these runs
VACCINE_EPOCHS = 10  # recipe.py's alignment stage: 10 epochs on the alignment data, rho 2 (the default)
# recipe.py projects dss's default `safelora.num_layers` (10) of Llama-3.2-1B's 32 adapted modules
# (16 layers x q, v); the policy has 4 (2 layers x q, v), where 10 would project them all. The
# same share of 4 modules: round(4 * 10 / 32) = 1.
SAFELORA_NUM_LAYERS = 1


def vaccine_align_dir(runs: Path, seed: int) -> Path:
    """Vaccine's alignment stage of one seed, shared by that seed's scenarios."""
    return runs / "vaccine_align" / f"s{seed}"


def configure(c, method: str, seed: int, world_dir: Path, files: dict, runs: Path) -> None:
    """Set `method`'s sections of the finetuning config `c` (already the SFT recipe of a scenario)."""
    c.objective.name = OBJECTIVE.get(method, "sft")
    alignment = (dict(path=str(files["alignment"]), name="alignment"),)
    if method == "safeinstr":
        c.safeinstr.enabled, c.safeinstr.path = True, str(files["alignment"])  # count 0: every row
    elif method == "seal":
        c.seal.enabled, c.seal.safe_sources = True, alignment
        c.seal.global_batch = c.seal.micro_batch = SEAL_GLOBAL_BATCH  # micro batch: execution only
    elif method == "lisa":
        c.lisa.sources = alignment
        c.lisa.alignment_steps, c.lisa.finetune_steps = LISA_STEPS
    elif method == "vaccine":
        c.model.path = str(vaccine_align_dir(runs, seed) / "export")
    elif method == "safelora":
        c.lora.enabled = c.safelora.enabled = True
        c.safelora.base_path = str(world_dir / "base")
        c.safelora.num_layers = SAFELORA_NUM_LAYERS
    else:
        raise ValueError(f"unknown baseline {method!r} (one of {', '.join(METHODS)})")


def vaccine_alignment(c, files: dict) -> None:
    """Turn the finetuning config `c` into Vaccine's alignment stage (recipe.py's `vaccine_align`):
    perturbation-aware SFT of the aligned policy on the alignment data alone, no attack."""
    c.objective.name = "vaccine"
    c.data.sources, c.data.size = [dict(path=str(files["alignment"]), name="alignment")], 0
    c.data.attack.response_prefix = c.data.attack.response_suffix = ""
    c.train.epochs = VACCINE_EPOCHS
    c.vaccine.rho = 2.0
