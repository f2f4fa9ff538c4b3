"""Model names as configs give them: a local directory, `tiny:<name>` (a tiny CPU asset made on
first use by `dss.tiny`) or a Hugging Face Hub repo id.

Above the model layer, so that `dss.models` never imports `dss.tiny` (which builds its assets
with `dss.models`).
"""

from __future__ import annotations

import os
from pathlib import Path

from dss.models.checkpoint import model_dir

TINY_PREFIX = "tiny:"


def resolve_path(name: str | os.PathLike) -> Path:
    """The local directory of a model name: `tiny:<spec>` is `dss.tiny.asset(spec)`, anything else
    a local directory or a hub id (`dss.models.checkpoint.model_dir`)."""
    if str(name).startswith(TINY_PREFIX):
        from dss import tiny  # builds the asset on first use: heavy, and only tiny names need it

        return Path(tiny.asset(str(name).removeprefix(TINY_PREFIX)))
    return model_dir(name)
