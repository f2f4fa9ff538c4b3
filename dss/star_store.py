"""STAR files: a run's trajectories kept beside it (`<workdir>/star.npz`), keyed by a fingerprint
of everything they depend on, so that training, RS and reruns score once (`cached_score`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import dss.hub
from dss import cache, distributed, sharding
from dss.errors import UserError
from dss.segments import Trajectory
from dss.star_score import Guardrail, score

log = logging.getLogger("dss.star")

__all__ = ["star_fingerprint", "save_trajectories", "load_trajectories", "guardrails_of", "cached_score"]


def star_fingerprint(guards: Sequence[Guardrail], examples, chunk_unit: str, chunk_size: int, score_mode: str) -> str:
    """Everything a STAR file depends on: data rows, each guardrail's weights, template and verdict
    recipe, chunking and score mode (not the method: shared_kv and naive give the same numbers)."""
    guard_ids = [
        dict(weights=cache.weights_fingerprint(dss.hub.resolve_path(g.path)), kind=g.adapter.kind,
             template=g.adapter.tokenizer.chat_template, template_vars=g.adapter.template_vars, risk=g.adapter.risk,
             verdict=g.adapter.verdict_token_ids)
        for g in guards
    ]
    rows = [(ex["prompt"], ex["response"]) for ex in examples]
    return cache.fingerprint("star", rows, guard_ids, chunk_unit, chunk_size, score_mode)


def _arrays(trajs: Sequence[Trajectory]) -> dict[str, np.ndarray]:
    return dict(
        lengths=np.array([len(t.char_ends) for t in trajs], np.int64),
        char_ends=np.concatenate([np.asarray(t.char_ends, np.int64) for t in trajs]) if trajs else np.zeros(0, np.int64),
        safe_prob=np.concatenate([t.safe_prob for t in trajs]) if trajs else np.zeros(0, np.float32),
    )


def _trajectories(arrays: dict[str, np.ndarray]) -> list[Trajectory]:
    bounds = np.concatenate([[0], np.cumsum(arrays["lengths"])])
    return [Trajectory(arrays["char_ends"][a:b].tolist(), arrays["safe_prob"][a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def save_trajectories(path, trajs: Sequence[Trajectory], fp: str) -> None:
    cache.save(path, "star", fp, _arrays(trajs))


def load_trajectories(path, fp: str) -> list[Trajectory] | None:
    arrays = cache.load(path, "star", fp)
    return None if arrays is None else _trajectories(arrays)


def guardrails_of(config, template_vars=None) -> list[Guardrail]:
    """The config's guardrails (`config.guardrail`), loaded on its guardrail mesh (if any)."""
    g = config.guardrail
    try:
        mesh = sharding.make_mesh(*g.mesh) if g.mesh else None
    except ValueError as err:
        raise UserError(f"config.guardrail.mesh = {tuple(g.mesh)} (data, fsdp, tensor): {err}") from None
    return [Guardrail.from_pretrained(p, kind=g.kind, risk=g.risk or None, dtype=g.dtype, mesh=mesh,
                                      template_vars=template_vars) for p in g.paths]


def cached_score(config, examples, workdir, template_vars=None, path=None) -> list[Trajectory]:
    """STAR of a config's examples: reused from the STAR file when it matches, else computed and
    written. `path` None: the run's file (config.star.cache, else <workdir>/star.npz); a stale
    default file is replaced, a stale file the user named is refused. A given `path` is a file
    dss chose (another data set's STAR, e.g. <workdir>/star_alignment.npz): stale -> rescored.
    `template_vars`: the run's fixed template variables (dss.templating)."""
    s = config.star
    guards = guardrails_of(config, template_vars)
    mesh = guards[0].mesh
    fp = star_fingerprint(guards, examples, s.chunk_unit, s.chunk_size, s.score_mode)
    named = path is None and bool(s.cache)
    if path is None:
        path = Path(s.cache) if s.cache else Path(workdir) / "star.npz"

    def compute() -> dict[str, np.ndarray]:
        start = time.time()
        # a guardrail on each host's own device scores that host's share (gathered for all); one
        # sharded over a mesh is a collective, so then every host scores every example with it
        mine = distributed.share(len(examples)) if mesh is None else range(len(examples))
        trajs = score(guards, [examples[i] for i in mine], chunk_unit=s.chunk_unit, chunk_size=s.chunk_size,
                      method=s.method, score_mode=s.score_mode, token_budget=s.token_budget, progress=True)
        if mesh is None:
            trajs = distributed.gather_shares(trajs, len(examples))
        log.info("STAR: scored %d examples in %.1fs -> %s", len(trajs), time.time() - start, path)
        return _arrays(trajs)

    return _trajectories(cache.load_or_compute(path, "star", fp, compute, "data or guardrail", named=named,
                                               write=distributed.is_writer()))
