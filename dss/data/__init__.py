"""Finetuning data: sources -> mixtures -> attack transforms -> chat encoding -> batches.

`build_dataset(config.data, tokenizer)` runs the whole chain for training; the pieces are public
for scripts and tests. The demo set `demo.jsonl` (see README.md here) and the small licensed
data sets under `files/` (see files/README.md) ship with the package.
"""

from pathlib import Path

from dss.buckets import bucket_length
from dss.data.batching import StepBatcher, scatter_per_token
from dss.data.chat import DEFAULT_MAX_LENGTH, Encoded, encode_chat, encode_examples
from dss.data.mixture import apportion, mix, sample_rows
from dss.data.pipeline import build_dataset
from dss.data.sources import BadRow, load_examples
from dss.data.transforms import apply_attack, attack_row

DEMO_PATH = Path(__file__).parent / "demo.jsonl"
BUNDLED_DIR = Path(__file__).parent / "files"


def bundled(relative: str) -> Path:
    """Path of a file shipped under dss/data/files (e.g. "advbench/harmful_behaviors.csv")."""
    path = BUNDLED_DIR / relative
    if not path.exists():
        raise FileNotFoundError(f"{path}: not among the bundled data files (see {BUNDLED_DIR / 'README.md'})")
    return path


__all__ = [
    "BUNDLED_DIR", "DEFAULT_MAX_LENGTH", "DEMO_PATH", "BadRow", "Encoded", "StepBatcher", "apply_attack", "apportion",
    "attack_row", "bucket_length", "build_dataset", "bundled", "encode_chat", "encode_examples", "load_examples",
    "mix", "sample_rows", "scatter_per_token",
]
