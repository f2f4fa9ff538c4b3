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
import re
from collections.abc import Mapping
from typing import Any
from pathlib import Path

from dss.atomic import atomic_file

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
    from dss import distributed  # here, so that rendering (dss.data, dss.guardrails) loads no JAX

    fixed = distributed.broadcast_object(_resolve(wanted))  # hosts may start on either side of midnight
    if distributed.is_writer():
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(fixed, indent=2, sort_keys=True) + "\n")
    return fixed


# Defines `strftime_now` in the template itself (transformers hands templates only plain data, no
# functions): it reads the dates dss formatted from the run's date_string, per format asked for.
# `{{ '' }}` ends the prefix with an expression, so no newline the template opens with is trimmed.
_FIXED_CLOCK = (
    "{% macro strftime_now(format) %}{% if format not in dss_fixed_dates %}"
    "{{ raise_exception('dss: strftime_now(' ~ format ~ ') is not among the formats fixed for this run') }}"
    "{% endif %}{{ dss_fixed_dates[format] }}{% endmacro %}{{ '' }}"
)
_CLOCK_CALL = re.compile(r"""strftime_now\(\s*(['"])(.*?)\1\s*\)""")


def fixed_clock(template: str, template_vars: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(template, variables) to render with: where the template reads the clock itself
    (`strftime_now`) and the run fixed a `date_string`, the clock reads that date instead of today.

    Granite Guardian 3.1 writes `strftime_now('%B %d, %Y')` into the system turn it adds and
    ignores `date_string`, so without this its prompts, and the STAR scores read from them,
    would change with the calendar (Llama 3.2 reads the clock only when no `date_string` is given).
    """
    render = dict(template_vars)
    date = render.get("date_string")
    if not date or "strftime_now" not in template:
        return template, render
    try:
        day = datetime.datetime.strptime(date, DATE_FORMAT)
    except ValueError as e:
        raise ValueError(
            f"template variable date_string={date!r} is not a date like '26 Jul 2024' "
            f"({DATE_FORMAT}), but the chat template reads the clock (strftime_now), "
            "which then gets the run's date from it"
        ) from e
    render["dss_fixed_dates"] = {m.group(2): day.strftime(m.group(2)) for m in _CLOCK_CALL.finditer(template)}
    return _FIXED_CLOCK + template, render


def render(tokenizer, messages, template_vars: Mapping | None = None, **kwargs) -> str:
    """`tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)` with the run's fixed
    variables, and with the template's own clock (`strftime_now`) reading the run's date: the one
    way every dss job renders a chat."""
    template, variables = fixed_clock(tokenizer.get_chat_template(), template_vars or {})
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, **variables, **kwargs)
