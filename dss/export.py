"""A trained model as a Hugging Face directory (weights, config, tokenizer, chat template),
swapped in only when complete.

Every host takes part (the weights are gathered from all of them); process 0 writes. A remote
`out_dir` (gs://...) is written locally first, then copied file by file, config.json last, so an
interrupted copy is never a loadable model.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from etils import epath

import dss.models
from dss import distributed
from dss.atomic import atomic_dir

log = logging.getLogger("dss.export")


def export(model, tokenizer, out_dir) -> None:
    if not distributed.is_writer():
        dss.models.save_pretrained(model, Path(str(out_dir)))  # joins the gather; only process 0 writes
    elif _is_local(out_dir):
        with atomic_dir(Path(out_dir)) as tmp:
            dss.models.save_pretrained(model, tmp)
            tokenizer.save_pretrained(tmp)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            dss.models.save_pretrained(model, tmp)
            tokenizer.save_pretrained(tmp)
            remote = epath.Path(out_dir)
            remote.mkdir(parents=True, exist_ok=True)
            for file in sorted(Path(tmp).iterdir(), key=lambda f: f.name == "config.json"):
                with open(file, "rb") as src, (remote / file.name).open("wb") as dst:
                    shutil.copyfileobj(src, dst, 64 << 20)
    if distributed.is_writer():
        log.info("exported %s", out_dir)
    distributed.barrier("dss.train export")


def _is_local(path) -> bool:
    return "://" not in str(path)
