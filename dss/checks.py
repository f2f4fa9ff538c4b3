"""Bad input, early and by name: config checks that run before anything is loaded, and file
readers whose errors say `<file> line N: <reason>`.

A typo in a setting used to surface after the tokenizer, the data, the guardrails and the policy
were loaded and STAR was scored (minutes to hours on a real run), and a malformed data line as
`DatasetGenerationError` with no file or line. `check_train_config` / `check_star_config` refuse
such a config first, each message naming the key; `read_json` / `read_csv` are the one place
local JSON, JSON-lines and CSV files are parsed or diagnosed (training sources, eval benchmarks).
"""

from __future__ import annotations

import codecs
import csv
import functools
import io
import json
import os
from pathlib import Path
from typing import Any

OBJECTIVES = ("star_dss", "sft", "rs", "deep_token", "kl_only", "vaccine", "lisa")
RS_MODES = ("hard", "soft")
TRAIN_ON = ("last", "all")
ON_BAD_ROW = ("error", "drop")
CHUNK_UNITS = ("word", "token")
STAR_METHODS = ("shared_kv", "naive")
SCORE_MODES = ("raw", "hf_sampling")


# ----------------------------------------------------------------------------- config


def _value(config, key: str):
    return functools.reduce(lambda node, k: node[k], key.split("."), config)


def _one_of(config, key: str, choices, what: str) -> None:
    value = _value(config, key)
    if value not in choices:
        raise ValueError(f"config.{key} = {value!r}: unknown {what}; use one of {', '.join(choices)}")


def _positive(config, key: str) -> int:
    value = _value(config, key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"config.{key} = {value!r}: must be a positive integer")
    return value


def _non_negative(config, key: str) -> float:
    value = _value(config, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"config.{key} = {value!r}: must be a number >= 0")
    return value


def _mesh(config, key: str, shape):
    """The mesh of `shape` on this host's devices (cheap: no arrays), its errors naming `key`."""
    from dss import sharding

    try:
        return sharding.make_mesh(*shape)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config.{key} = {tuple(shape)} (data, fsdp, tensor): {err}") from None


def _sources(config) -> None:
    if not list(config.data.sources):
        raise ValueError("config.data.sources = []: no finetuning data; give at least one source dict with a 'path'")
    _one_of(config, "data.on_bad_row", ON_BAD_ROW, "bad-row policy")


def _alignment_data(config) -> None:
    """Vaccine and Lisa train on alignment data (harmful prompt -> refusal): refuse a run without it,
    and their settings, by key."""
    name = config.objective.name
    if name == "vaccine":
        if not list(config.data.sources):
            raise ValueError("config.data.sources = []: objective 'vaccine' is the alignment stage and trains on "
                             "alignment data (harmful prompt -> refusal); give at least one source dict with a 'path'")
        _non_negative(config, "vaccine.rho")
    if name == "lisa":
        if not list(config.lisa.sources):
            raise ValueError("config.lisa.sources = (): objective 'lisa' alternates user finetuning with steps on "
                             "alignment data (harmful prompt -> refusal); give at least one source dict with a 'path'")
        for k, source in enumerate(config.lisa.sources):
            if not hasattr(source, "keys") or not source.get("path"):
                raise ValueError(f"config.lisa.sources[{k}] = {source!r}: must be a source dict with a 'path'")
            if _missing_file(source["path"]):
                raise ValueError(f"config.lisa.sources[{k}].path = {source['path']!r}: no such file")
        _positive(config, "lisa.alignment_steps")
        _positive(config, "lisa.finetune_steps")
        _non_negative(config, "lisa.rho")
        if not 0 <= _non_negative(config, "lisa.proximal_after") <= 1:
            raise ValueError(f"config.lisa.proximal_after = {config.lisa.proximal_after!r}: a share of the steps, "
                             "between 0 and 1")


def _missing_file(path) -> bool:
    """Whether `path` names a local file (a data-file suffix, or an absolute or ./ path) that is not there."""
    from dss.data.sources import FILE_FORMATS  # imported here: dss.data imports this module

    p = Path(str(path))
    local = p.suffix.lower() in FILE_FORMATS or p.is_absolute() or str(path).startswith(".")
    return local and not p.exists()


def _safeinstr(config) -> None:
    """SafeInstr's safety set and its draw, by key."""
    s = config.safeinstr
    if not s.enabled:
        return
    if s.path and _missing_file(s.path):
        raise ValueError(f"config.safeinstr.path = {s.path!r}: no such file (the safety set SafeInstr adds to the data; "
                         "'' = the bundled HarmBench refusals)")
    for key in ("safeinstr.prompt_field", "safeinstr.response_field"):
        if not isinstance(_value(config, key), str) or not _value(config, key):
            raise ValueError(f"config.{key} = {_value(config, key)!r}: must name a field of the safety set")
    if isinstance(s.count, bool) or not isinstance(s.count, int) or s.count < 0:
        raise ValueError(f"config.safeinstr.count = {s.count!r}: must be an integer >= 0 (0 = every row)")


def _seal(config, shards: int) -> None:
    """SEAL's safe data (its upper level) and selector settings, by key; `shards`: the devices a
    batch is split over."""
    from dss.baselines.seal import ACTIVATIONS

    s = config.seal
    if not s.enabled:
        return
    sources = list(s.safe_sources)
    if not sources:
        raise ValueError(f"config.seal.safe_sources = {s.safe_sources!r}: SEAL trains its data selector against safe/aligned data; give "
                         "at least one source dict with a 'path' (e.g. the bundled refusals, "
                         "dss.data.bundled('safety_refusals/harmbench_refusals.jsonl'))")
    for k, source in enumerate(sources):
        if not hasattr(source, "keys") or not source.get("path"):
            raise ValueError(f"config.seal.safe_sources[{k}] = {source!r}: must be a source dict with a 'path'")
        if _missing_file(source["path"]):
            raise ValueError(f"config.seal.safe_sources[{k}].path = {source['path']!r}: no such file")
    fraction = s.keep_fraction
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"config.seal.keep_fraction = {fraction!r}: the share of user examples kept, in (0, 1]")
    _one_of(config, "seal.activation", ACTIVATIONS, "selector activation")
    epochs = _positive(config, "seal.epochs")
    global_batch, micro_batch = _positive(config, "seal.global_batch"), _positive(config, "seal.micro_batch")
    if global_batch % micro_batch:
        raise ValueError(f"config.seal.global_batch = {global_batch}: not a multiple of config.seal.micro_batch = "
                         f"{micro_batch}")
    if global_batch % shards:
        raise ValueError(f"config.seal.global_batch = {global_batch}: the batch is split over {shards} devices "
                         f"(config.mesh data x fsdp); use a multiple of {shards}")
    if isinstance(s.max_steps, bool) or not isinstance(s.max_steps, int) or not (s.max_steps == -1 or s.max_steps > 0):
        raise ValueError(f"config.seal.max_steps = {s.max_steps!r}: a positive integer, or -1 (epochs decide)")
    for key in ("seal.lr", "seal.selector_lr"):
        value = _value(config, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"config.{key} = {value!r}: must be a positive learning rate")
    weight, decay = s.upper_weight, s.upper_weight_decay
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight <= 1:
        raise ValueError(f"config.seal.upper_weight = {weight!r}: the weight of the safe loss, in (0, 1]")
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not (decay >= 0 and decay * (epochs - 1) <= weight):
        raise ValueError(f"config.seal.upper_weight_decay = {decay!r}: must be >= 0 and keep the safe-loss weight "
                         f"config.seal.upper_weight - epoch * decay >= 0 through all {epochs} epochs")


def _lora(config) -> None:
    """LoRA's adapters and SafeLoRA's projection, by key: SafeLoRA projects a LoRA update, from
    the base model `model.path` was aligned from."""
    from dss.baselines.safelora import SELECT
    from dss.models.transformer import LORA_TARGETS

    lora, safe = config.lora, config.safelora
    if safe.enabled and not lora.enabled:
        raise ValueError("config.lora.enabled = False: config.safelora projects the update of a LoRA run; "
                         "set config.lora.enabled=True")
    if not lora.enabled:
        return
    _positive(config, "lora.rank")
    if isinstance(lora.alpha, bool) or not isinstance(lora.alpha, (int, float)) or not lora.alpha > 0:
        raise ValueError(f"config.lora.alpha = {lora.alpha!r}: must be a number > 0 (the update is scaled by alpha / rank)")
    if isinstance(lora.dropout, bool) or not isinstance(lora.dropout, (int, float)) or not 0 <= lora.dropout < 1:
        raise ValueError(f"config.lora.dropout = {lora.dropout!r}: a rate in [0, 1)")
    if isinstance(lora.targets, str):
        raise ValueError(f"config.lora.targets = {lora.targets!r}: a tuple of module names, e.g. ('q', 'v')")
    targets = tuple(lora.targets)
    if not targets:
        raise ValueError(f"config.lora.targets = {lora.targets!r}: no module to adapt; name one or more of "
                         f"{', '.join(LORA_TARGETS)}")
    for target in targets:
        if target not in LORA_TARGETS:
            raise ValueError(f"config.lora.targets = {lora.targets!r}: {target!r} matches no module; use names among "
                             f"{', '.join(LORA_TARGETS)}")
    if len(set(targets)) != len(targets):
        raise ValueError(f"config.lora.targets = {lora.targets!r}: a module is named twice")
    if not safe.enabled:
        return
    if not safe.base_path:
        raise ValueError("config.safelora.base_path = '': SafeLoRA builds its alignment matrices from the unaligned base "
                         "model of config.model.path (e.g. meta-llama/Llama-3.2-1B for Llama-3.2-1B-Instruct)")
    if _missing_file(safe.base_path):
        raise ValueError(f"config.safelora.base_path = {safe.base_path!r}: no such directory")
    _one_of(config, "safelora.select", SELECT, "SafeLoRA selection")
    if isinstance(safe.threshold, bool) or not isinstance(safe.threshold, (int, float)):
        raise ValueError(f"config.safelora.threshold = {safe.threshold!r}: must be a number (a cosine similarity)")
    _positive(config, "safelora.num_layers")


def check_star_config(config, needed_by: str = "python -m dss.star") -> None:
    """What STAR scoring reads (`dss.star.cached_score`): data sources, at least one guardrail, its
    kind, chunking, method, score mode, budget and mesh; `needed_by` says who wants STAR."""
    from dss.guardrails import KINDS

    _sources(config)
    g = config.guardrail
    if not isinstance(g.paths, (list, tuple)) or not g.paths or not all(isinstance(p, str) and p for p in g.paths):
        raise ValueError(f"config.guardrail.paths = {g.paths!r}: {needed_by} scores the data with STAR, which "
                         "needs a list of one or more guardrails (HF directories or hub ids)")
    _one_of(config, "guardrail.kind", ("auto", *KINDS), "guardrail kind")
    _one_of(config, "star.chunk_unit", CHUNK_UNITS, "chunk unit")
    _positive(config, "star.chunk_size")
    _one_of(config, "star.method", STAR_METHODS, "STAR method")
    _one_of(config, "star.score_mode", SCORE_MODES, "STAR score mode")
    _positive(config, "star.token_budget")
    if g.mesh:
        _mesh(config, "guardrail.mesh", g.mesh)


def check_train_config(config) -> None:
    """Every setting `dss.train.train` can find wrong, checked before the tokenizer, data, STAR or
    model is loaded (call it after `jax.distributed.initialize`: it builds the mesh)."""
    from dss.models.transformer import REMAT_POLICIES
    from dss.objectives import KL_ESTIMATORS
    from dss.train import NEEDS_STAR  # imported here: dss.train imports this module

    _one_of(config, "objective.name", OBJECTIVES, "objective")
    _one_of(config, "objective.kl_estimator", KL_ESTIMATORS, "KL estimator")
    _one_of(config, "objective.rs_mode", RS_MODES, "rs mode")
    _one_of(config, "data.train_on", TRAIN_ON, "train_on")
    _one_of(config, "train.remat", tuple(REMAT_POLICIES), "remat policy")
    if not config.model.path:
        raise ValueError("config.model.path = '': give the policy to finetune (HF directory or hub id)")
    _alignment_data(config)
    _sources(config)
    if config.objective.name in NEEDS_STAR:
        check_star_config(config, f"objective {config.objective.name!r}")
    global_batch, micro_batch = _positive(config, "train.global_batch"), _positive(config, "train.micro_batch")
    if global_batch % micro_batch:
        raise ValueError(f"config.train.global_batch = {global_batch}: not a multiple of config.train.micro_batch = "
                         f"{micro_batch} (each step accumulates global_batch / micro_batch micro-batches)")
    m = config.mesh
    mesh = _mesh(config, "mesh", (m.data, m.fsdp, m.tensor))
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if global_batch % shards:
        raise ValueError(f"config.train.global_batch = {global_batch}: the batch is split over the mesh's data x fsdp "
                         f"= {mesh.shape['data']} x {mesh.shape['fsdp']} devices (config.mesh, {len(mesh.devices.flat)} "
                         f"devices in all); use a multiple of {shards}")
    _safeinstr(config)
    _seal(config, shards)
    _lora(config)
