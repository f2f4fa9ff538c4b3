"""Finetuning data: sources -> mixtures -> attack transforms -> chat encoding -> batches.

`build_dataset(config.data, tokenizer)` runs the whole chain for training; the pieces are public
for scripts and tests. The demo set `demo.jsonl` (see README.md here) ships with the package.
"""

from pathlib import Path

from dss.data.batching import StepBatcher, bucket_length, scatter_per_token
from dss.data.chat import DEFAULT_MAX_LENGTH, Encoded, encode_chat, encode_examples
from dss.data.mixture import apportion, mix, sample_rows
from dss.data.pipeline import build_dataset
from dss.data.sources import BadRow, load_examples
from dss.data.transforms import apply_attack, attack_row

DEMO_PATH = Path(__file__).parent / "demo.jsonl"

__all__ = [
    "DEFAULT_MAX_LENGTH", "DEMO_PATH", "BadRow", "Encoded", "StepBatcher", "apply_attack", "apportion",
    "attack_row", "bucket_length", "build_dataset", "encode_chat", "encode_examples", "load_examples",
    "mix", "sample_rows", "scatter_per_token",
]
