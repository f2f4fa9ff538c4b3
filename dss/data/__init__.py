"""Finetuning data: sources -> mixtures -> attack transforms -> chat encoding -> batches.

`build_dataset(config.data, tokenizer)` runs the whole chain for training; the pieces are public
for scripts and tests. The demo set `demo.jsonl` (see README.md here) and the small licensed
data sets under `files/` (see files/README.md) ship with the package.

The names below are imported on first use: config files read `DEMO_PATH` / `bundled()` and the
command line checks data files (`dss.data.sources`) before transformers or datasets is loaded.
"""

import importlib
from pathlib import Path

DEMO_PATH = Path(__file__).parent / "demo.jsonl"
BUNDLED_DIR = Path(__file__).parent / "files"


def bundled(relative: str) -> Path:
    """Path of a file shipped under dss/data/files (e.g. "advbench/harmful_behaviors.csv")."""
    path = BUNDLED_DIR / relative
    if not path.exists():
        raise FileNotFoundError(f"{path}: not among the bundled data files (see {BUNDLED_DIR / 'README.md'})")
    return path


_HOME = {
    "bucket_length": "dss.buckets",
    "StepBatcher": "dss.data.batching", "scatter_per_token": "dss.data.batching",
    **dict.fromkeys(("DEFAULT_MAX_LENGTH", "Encoded", "encode_chat", "encode_examples"), "dss.data.chat"),
    **dict.fromkeys(("apportion", "mix", "sample_rows"), "dss.data.mixture"),
    "build_dataset": "dss.data.pipeline",
    "BadRow": "dss.data.sources", "load_examples": "dss.data.sources",
    "apply_attack": "dss.data.transforms", "attack_row": "dss.data.transforms",
}

__all__ = sorted(["BUNDLED_DIR", "DEMO_PATH", "bundled", *_HOME])


_SUBMODULES = ("batching", "chat", "mixture", "pipeline", "sources", "transforms")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"dss.data.{name}")
    if name not in _HOME:
        raise AttributeError(f"module 'dss.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value
