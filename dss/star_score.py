"""STAR: the guardrail's P(safe) of every cumulative prefix of a response.

`score(guard, examples)` cuts each response (`dss.segments`), renders every prefix with the
guardrail's own template (`dss.guardrails`) and reads the two verdict logits after it.

Two packings of the same forward kernel (`dss.star_kernels`, planned by `dss.star_plan`):
- `naive`: one row per prefix, a plain causal pass over its own tokens (the reference).
- `shared_kv`: the template head (the text before the prompt, the same for every example) is
  run once; each example's full rendering is run once on top of it, and its verdict is the
  last prefix's (the whole response). Every other prefix then runs only its "suffix": its own
  tokens after the longest token prefix it shares with the full rendering (the template tail
  plus, where byte-level BPE merges across the cut (".\n\n"), the tokens that differ). A suffix
  attends to the cached slots it has in common and to its own earlier tokens, at its own
  positions, so every prefix is scored on exactly the tokens its own rendering tokenises to.

Suffix rows are sorted by how much of the cache they see and batched so that each call attends
to no more of it than it needs; lengths are bucketed, so the programs compiled are bounded by
the buckets, not the data (`score(..., report=True)` counts them); only the verdict positions are
unembedded; each call is dispatched before the previous one's logits are fetched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

import dss.hub
import dss.models
from dss import compiles, star_kernels, star_plan
from dss.generate import process_logits
from dss.guardrails import GuardrailAdapter
from dss.segments import Trajectory, token_cuts, word_cuts
from dss.star_config import CHUNK_UNITS, SCORE_MODES, STAR_METHODS

log = logging.getLogger("dss.star")

__all__ = ["Guardrail", "CompileReport", "HF_SAMPLING", "score", "prefix_plans"]

# The sampling settings the reference implementation generated verdicts with.
HF_SAMPLING = dict(temperature=0.2, top_k=50, top_p=0.9, repetition_penalty=1.2)


@dataclasses.dataclass
class Guardrail:
    """A guardrail checkpoint: its template/verdict recipe (`adapter`) and its weights (`model`)."""

    adapter: GuardrailAdapter
    model: dss.models.Transformer
    path: str
    mesh: jax.sharding.Mesh | None = None  # weights sharded over it (8B guardrails), batches split over data x fsdp

    @classmethod
    def from_pretrained(cls, path, kind: str = "auto", risk: str | None = None, dtype="float32", mesh=None,
                        template_vars=None):
        """`template_vars`: the run's fixed template variables (dss.templating), given to every rendering."""
        local = dss.hub.resolve_path(path)
        adapter = GuardrailAdapter.from_pretrained(local, kind=kind, risk=risk, template_vars=template_vars)
        adapter.name = os.fspath(path)
        model = dss.models.load_pretrained(local, dtype=dtype, mesh=mesh)
        if max(adapter.verdict_token_ids) >= model.config.vocab_size:
            raise ValueError(f"guardrail {path!r}: verdict token ids {adapter.verdict_token_ids} exceed the model vocabulary")
        return cls(adapter, model, os.fspath(path), mesh)


def prefix_plans(guard: Guardrail, examples, cuts) -> list[star_plan.Plan]:
    """Each example's shared-KV plan (`dss.star_plan.shared_plan`) for the prefixes `cuts` gives."""
    adapter = guard.adapter
    full = adapter.encode_many([(ex["prompt"], ex["response"]) for ex in examples])
    return [star_plan.shared_plan(ids, f, e) for e, (ids, f) in enumerate(zip(_prefix_ids(guard, examples, cuts), full))]


def _prefix_ids(guard: Guardrail, examples, cuts) -> list[list[list[int]]]:
    """Every prefix's token ids, per example."""
    flat = guard.adapter.encode_many([(ex["prompt"], ex["response"][:c]) for ex, ex_cuts in zip(examples, cuts)
                                      for c in ex_cuts])
    bounds = np.cumsum([0] + [len(c) for c in cuts])
    return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _safe_prob(guard: Guardrail, logits: np.ndarray, seen: list[int], score_mode: str) -> float:
    safe, unsafe = guard.adapter.verdict_token_ids
    if score_mode == "hf_sampling":
        seen_mask = np.zeros(logits.shape[-1], bool)
        seen_mask[seen] = True
        logits = np.asarray(process_logits(logits, seen_mask, **HF_SAMPLING))
        pair = logits[[safe, unsafe]]
        if np.isneginf(pair).all():  # neither verdict word survives top-k/top-p: no verdict
            return float("nan")
        return float(np.exp(pair[0] - np.logaddexp(pair[0], pair[1])))
    return float(1.0 / (1.0 + np.exp(logits[1] - logits[0])))


def _score_one_guard(guard, examples, cuts, method, score_mode, token_budget, progress):
    probs = [np.full(len(c), np.nan, np.float32) for c in cuts]
    multiple = 1 if guard.mesh is None else guard.mesh.shape["data"] * guard.mesh.shape["fsdp"]
    logits_args = dict(verdict_ids=jnp.asarray(guard.adapter.verdict_token_ids), full_vocab=score_mode == "hf_sampling")
    graphdef, state = nnx.split(guard.model)
    if method == "naive":
        items = [(e, k, p) for e, per_example in enumerate(_prefix_ids(guard, examples, cuts)) for k, p in enumerate(per_example)]
        calls = star_kernels.naive_calls(graphdef, state, items, logits_args, token_budget, multiple)
        bound = star_plan.naive_bound([len(p) for _, _, p in items], token_budget, multiple)
    else:
        plans = prefix_plans(guard, examples, cuts)
        calls = star_kernels.shared_calls(graphdef, state, plans, logits_args, token_budget, multiple)
        bound = star_plan.shared_bound(plans, token_budget, multiple)
    # progress in whole examples: one counts when the last of its prefixes is scored
    left = [len(c) for c in cuts]
    bar = tqdm(total=len(examples), unit="example", disable=not progress, desc=f"STAR {method}")
    with bar, jax.set_mesh(guard.mesh) if guard.mesh is not None else contextlib.nullcontext():
        for logits, owners in star_kernels.one_behind(calls):
            done = 0
            for e, k, at, seen in owners:
                probs[e][k] = _safe_prob(guard, logits[at], seen, score_mode)
                left[e] -= 1
                done += left[e] == 0
            bar.update(done)
    return probs, bound


@dataclasses.dataclass(frozen=True)
class CompileReport:
    """What one `score` call compiled: a program per shape it met first, at most `bound` (from the
    length buckets: `dss.star_plan.naive_bound`, `shared_bound`), and the seconds tracing and compiling them."""

    examples: int
    programs: int
    bound: int
    seconds: float


def score(guard, examples, chunk_unit: str = "word", chunk_size: int = 5, method: str = "shared_kv",
          score_mode: str = "raw", token_budget: int = 16384, progress: bool = False, report: bool = False):
    """STAR trajectories of `examples` (sequence of {"prompt": str, "response": str}).

    `guard` is a Guardrail or a sequence of them (an ensemble: P(safe) averaged; token chunking
    then follows the first guardrail's tokenizer). `score_mode="raw"`: softmax over the two verdict
    logits; `"hf_sampling"`: the same two logits after HF's repetition penalty 1.2, temperature
    0.2, top-k 50 and top-p 0.9 (`HF_SAMPLING`), i.e. what the reference implementation's sampled
    verdicts were drawn from; NaN where neither verdict token survives the filters.
    Returns the trajectories, and with `report=True` also the run's `CompileReport` (always logged).
    """
    guards = [guard] if isinstance(guard, Guardrail) else list(guard)
    if not guards:
        raise ValueError("score: no guardrail given")
    if method not in STAR_METHODS:
        raise ValueError(f"score: method must be 'shared_kv' or 'naive', got {method!r}")
    if score_mode not in SCORE_MODES:
        raise ValueError(f"score: score_mode must be 'raw' or 'hf_sampling', got {score_mode!r}")
    for i, ex in enumerate(examples):
        for key in ("prompt", "response"):
            if not isinstance(ex.get(key) if hasattr(ex, "get") else None, str):
                raise ValueError(f"score: example {i} needs a string {key!r}, got {type(ex.get(key)).__name__ if hasattr(ex, 'get') else type(ex).__name__}")
    if chunk_unit not in CHUNK_UNITS:
        raise ValueError(f"score: chunk_unit must be 'word' or 'token', got {chunk_unit!r}")
    cuts = example_cuts(guards[0], examples, chunk_unit, chunk_size)
    with compiles.counting(star_kernels.PROGRAMS) as compiled:
        per_guard = [_score_one_guard(g, examples, cuts, method, score_mode, token_budget, progress) for g in guards]
    run = CompileReport(len(examples), compiled.count, sum(bound for _, bound in per_guard), compiled.seconds)
    log.info("STAR %s: %d examples, %d shapes compiled in %.1f s (bound %d)", method, run.examples, run.programs,
             run.seconds, run.bound)
    trajs = [Trajectory(c, np.mean([probs[i] for probs, _ in per_guard], axis=0)) for i, c in enumerate(cuts)]
    return (trajs, run) if report else trajs


def example_cuts(guard: Guardrail, examples, chunk_unit: str = "word", chunk_size: int = 5) -> list[list[int]]:
    """Each response's prefix ends (`dss.segments`); token chunks follow `guard`'s tokenizer."""
    if chunk_unit == "word":
        return [word_cuts(ex["response"], chunk_size) for ex in examples]
    return [token_cuts(ex["response"], guard.adapter.tokenizer, chunk_size) for ex in examples]
