"""Chat-template variables fixed once per run, so no rendering depends on the day it is made.

Llama 3.x Instruct templates write "Today Date: <date_string>" into every system header and read
the clock (`strftime_now`) when the caller passes no `date_string`. A run stopped before midnight
and resumed after it would then train on other tokens, and an evaluation would see other prompts
on another day. So a run fixes its template variables at its first job (`config.template`, where
`date_string = ""` means today) and records them in `<workdir>/template_vars.json`; every later job
of that workdir (a resume, STAR, the reference log-probs, `dss.eval`, `dss.landscape`) reads them
back and passes them to every `apply_chat_template` call. Templates that use none of them ignore
them.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Mapping
from pathlib import Path

FILE = "template_vars.json"
DATE_FORMAT = "%d %b %Y"  # what Llama 3.x templates ask strftime_now for ("26 Jul 2024")


def today() -> str:
    """Today's date as Llama 3.x templates write it (a function so tests can move the clock)."""
    return datetime.date.today().strftime(DATE_FORMAT)


def _resolve(wanted: Mapping) -> dict:
    """The config's variables with the clock read once for those left empty."""
    fixed = dict(wanted)
    if not fixed.get("date_string"):
        fixed["date_string"] = today()
    return fixed


def _agree(fixed: dict) -> dict:
    """Process 0's variables on every host (hosts may start on either side of midnight)."""
    import jax

    if jax.process_count() == 1:
        return fixed
    import numpy as np
    from jax.experimental import multihost_utils

    data = np.zeros(4096, np.uint8)
    encoded = json.dumps(fixed, sort_keys=True).encode()
    if len(encoded) > len(data):
        raise ValueError(f"config.template: the variables take {len(encoded)} bytes as JSON, more than {len(data)}")
    data[: len(encoded)] = np.frombuffer(encoded, np.uint8)
    agreed = np.asarray(multihost_utils.broadcast_one_to_all(data))
    return json.loads(bytes(agreed[agreed != 0]).decode())


def recorded(workdir: str | os.PathLike) -> dict | None:
    """The variables recorded in `workdir`, or None if it has none yet."""
    path = Path(workdir) / FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); restore it or start a new --workdir") from e


def run_template_vars(wanted: Mapping, workdir: str | os.PathLike) -> dict:
    """The template variables of the run in `workdir`: those recorded at its first job, else
    `wanted` (e.g. `config.template`) resolved now and recorded. A variable the config sets that
    differs from the recorded one is an error: the run's earlier jobs rendered with the other."""
    path = Path(workdir) / FILE
    wanted = dict(wanted or {})
    stored = recorded(workdir)
    if stored is not None:
        for key, value in wanted.items():
            if value and stored.get(key) != value:
                raise ValueError(
                    f"config.template.{key} = {value!r}, but {path} fixed it to {stored.get(key)!r} at this run's "
                    "first job; use a new --workdir for other template variables")
        return stored
    fixed = _agree(_resolve(wanted))
    import jax

    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(fixed, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    return fixed
