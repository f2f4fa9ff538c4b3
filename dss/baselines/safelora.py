"""SafeLoRA (Hsu et al., NeurIPS 2024): project a LoRA update onto the alignment subspace.

Alignment turned a base model into the chat model that LoRA then finetunes; for each adapted
weight, V = W_aligned - W_base holds the directions alignment moved it in. After finetuning,
each adapted module's update dW = B A is compared with C dW, C = V V^T / ||V||_F (the official
code's normalisation: by the Frobenius norm, so C is not an exact projector); in the modules
where the two are least alike (cosine <= `threshold`, or the `num_layers` least similar) B
becomes C B, so dW becomes C dW, and the other modules keep their update. The adapters are then
merged and exported like any LoRA run's. Everything here is in PEFT's layout (HF tensor names,
lora_A [r, in], lora_B [out, r]), the official code's view. See docs/baselines.md.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from dss import distributed
from dss.atomic import atomic_file
from dss.errors import UserError
from dss.lora import PEFT_PREFIX, peft_module
from dss.hub import resolve_path
from dss.models.checkpoint import SafetensorsDir

log = logging.getLogger("dss.safelora")

DECIMALS = 5  # the official code rounds each cosine to 5 decimals before comparing it
REPORT = "safelora.json"


def project_b(v: np.ndarray, b: np.ndarray) -> np.ndarray:
    """C B = V (V^T B) / ||V||_F for V [out, in], B [out, r], without the [out, out] matrix C."""
    return v @ (v.T @ b) / np.linalg.norm(v)


def cosine(b_new: np.ndarray, b: np.ndarray, a: np.ndarray) -> float:
    """Cosine similarity of B_new A and B A (flattened, as `torch.cosine_similarity`), from r x r
    Gram matrices: <X A, Y A>_F = sum((X^T Y) * (A A^T)), never an [out, in] product."""
    gram = a @ a.T
    inner = lambda x, y: float(np.sum((x.T @ y) * gram))
    return inner(b_new, b) / max(np.sqrt(inner(b_new, b_new) * inner(b, b)), 1e-8)


def selected(cosines: np.ndarray, cfg) -> np.ndarray:
    """Which modules are projected: cosine <= threshold, or (`number`) cosine <= the
    `num_layers`-th smallest one, as the official code does (ties project them all)."""
    if cfg.select == "threshold":
        return cosines <= cfg.threshold
    return cosines <= np.sort(cosines)[: cfg.num_layers][-1]


def _weights(path, what: str) -> SafetensorsDir:
    try:
        return SafetensorsDir(resolve_path(path))
    except (FileNotFoundError, ValueError) as err:
        raise UserError(f"{what} = {str(path)!r}: {err}") from None


def check_base(cfg, aligned_path, model_config, targets) -> None:
    """Refuse, before training, a base model that lacks one of the adapted weights or has it in
    another shape than the aligned model (`config.model.path`)."""
    base = _weights(cfg.base_path, "config.safelora.base_path")
    aligned = _weights(aligned_path, "config.model.path")
    for target in targets:
        for i in range(model_config.num_layers):
            name = peft_module(model_config, target).format(i=i) + ".weight"
            if name not in base.files:
                raise ValueError(f"config.safelora.base_path = {cfg.base_path!r}: no tensor {name!r} (SafeLoRA "
                                 "needs the unaligned base of config.model.path, with the same architecture)")
            shapes = [d.shape(name) for d in (base, aligned)]
            if shapes[0] != shapes[1]:
                raise ValueError(f"config.safelora.base_path = {cfg.base_path!r}: {name} has shape {shapes[0]}, "
                                 f"the aligned model's (config.model.path) {shapes[1]}")


def project(cfg, aligned_path, tensors: dict[str, np.ndarray], workdir=None) -> dict[str, np.ndarray]:
    """The PEFT-layout adapter `tensors` with SafeLoRA's projection applied; per-module cosines
    and choices go to `<workdir>/safelora.json` (process 0)."""
    base, aligned = _weights(cfg.base_path, "config.safelora.base_path"), _weights(aligned_path, "config.model.path")
    modules = sorted(k.removeprefix(PEFT_PREFIX).removesuffix(".lora_B.weight")
                     for k in tensors if k.endswith(".lora_B.weight"))
    projected_b, cosines = {}, []
    for module in modules:
        a, b = (tensors[f"{PEFT_PREFIX}{module}.lora_{f}.weight"].astype(np.float64) for f in "AB")
        v = aligned.get(f"{module}.weight").astype(np.float64) - base.get(f"{module}.weight").astype(np.float64)
        projected_b[module] = project_b(v, b)
        cosines.append(round(cosine(projected_b[module], b, a), DECIMALS))
    cosines = np.array(cosines)
    chosen = selected(cosines, cfg)
    out = dict(tensors)
    for module, take in zip(modules, chosen):
        if take:
            key = f"{PEFT_PREFIX}{module}.lora_B.weight"
            out[key] = projected_b[module].astype(tensors[key].dtype)
    log.info("SafeLoRA: %d of %d modules projected (%s)", chosen.sum(), len(modules),
             f"cosine <= {cfg.threshold}" if cfg.select == "threshold" else f"the {cfg.num_layers} least similar")
    if workdir is not None and distributed.is_writer():
        rows = [{"module": m, "cosine": float(c), "projected": bool(t)} for m, c, t in zip(modules, cosines, chosen)]
        with atomic_file(Path(workdir) / REPORT) as tmp:
            tmp.write_text(json.dumps({"select": cfg.select, "threshold": cfg.threshold, "num_layers": cfg.num_layers,
                                       "projected": int(chosen.sum()), "modules": rows}, indent=2))
    return out
