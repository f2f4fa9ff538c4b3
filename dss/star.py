"""STAR: the guardrail's P(safe) of every cumulative prefix of a response.

`score(guard, examples)` cuts each response (`dss.segments`), renders every prefix with the
guardrail's own template (`dss.guardrails`) and reads the two verdict logits after it.

Two packings of the same forward kernel:
- `naive`: one row per prefix, a plain causal pass over its own tokens (the reference).
- `shared_kv`: one row per example. The row holds the longest token prefix that all prefixes'
  renderings share with the full rendering (computed once), followed by each prefix's remaining
  tokens (its "suffix": the tail of its own tokenisation plus the template tail). A tree mask lets
  suffix k see the shared tokens it actually has in common with the full rendering and its own
  earlier tokens, at its own positions. So every prefix is scored on exactly the tokens its own
  rendered string tokenises to, even where byte-level BPE merges across a cut (".\\n\\n").

Rows are bucketed by length (bounded recompiles) and batched; only the verdict positions are
unembedded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

import dss.models
from dss import cache, sharding
from dss.generate import process_logits
from dss.guardrails import GuardrailAdapter
from dss.segments import Trajectory, token_cuts, token_weights, word_cuts

log = logging.getLogger("dss.star")

__all__ = ["Guardrail", "Trajectory", "score", "token_weights", "HF_SAMPLING"]

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
    def from_pretrained(cls, path, kind: str = "auto", risk: str | None = None, dtype="float32", mesh=None):
        local = dss.models.checkpoint.resolve_path(path)
        adapter = GuardrailAdapter.from_pretrained(local, kind=kind, risk=risk)
        adapter.name = os.fspath(path)
        model = dss.models.load_pretrained(local, dtype=dtype, mesh=mesh)
        if max(adapter.verdict_token_ids) >= model.config.vocab_size:
            raise ValueError(f"guardrail {path!r}: verdict token ids {adapter.verdict_token_ids} exceed the model vocabulary")
        return cls(adapter, model, os.fspath(path), mesh)


@dataclasses.dataclass
class _Plan:
    """One example's work: a token prefix to cache once, and each prefix's own remaining tokens."""

    example: int
    shared: list[int]  # leading tokens of the full rendering, cached once (naive: empty)
    suffixes: list[list[int]]  # prefix k's tokens after the first commons[k]
    commons: list[int]  # how many shared tokens prefix k really has in common with the full rendering
    seen: list[list[int]]  # each prefix's whole token list (for hf_sampling's repetition penalty)


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


def _shared_plan(ids_per_prefix, full_ids, example: int) -> _Plan:
    # each prefix keeps at least its last token as suffix: that is where its verdict is read
    commons = [min(_common_length(ids, full_ids), len(ids) - 1) for ids in ids_per_prefix]
    shared = list(full_ids[: max(commons)])
    return _Plan(example, shared, [ids[c:] for ids, c in zip(ids_per_prefix, commons)], commons, list(ids_per_prefix))


def _bucket(n: int, step: int = 64) -> int:
    """Round up to a multiple of `step` up to 512, then to 1/4 of the next power of two."""
    if n <= 512:
        return max(step, math.ceil(n / step) * step)
    grain = 2 ** (math.ceil(math.log2(n)) - 2)
    return math.ceil(n / grain) * grain


def _pow2(n: int) -> int:
    return 2 ** math.ceil(math.log2(max(1, n)))


def _groups(plan: _Plan, width: int) -> list[list[int]]:
    """Split an example's suffixes into consecutive groups of at most `width` tokens (one row each)."""
    groups, used = [[]], 0
    for k, suffix in enumerate(plan.suffixes):
        if groups[-1] and used + len(suffix) > width:
            groups.append([])
            used = 0
        groups[-1].append(k)
        used += len(suffix)
    return groups


def _length_batches(lengths: Sequence[int], token_budget: int, multiple: int, step: int = 64):
    """Greedy batches of length-sorted items: (indices, bucketed length, rows). Rows are a power of
    two (and a multiple of the device count) and lengths bucketed, so few shapes get compiled."""
    batch, length = [], 0
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        grown = _bucket(lengths[i], step)
        if batch and max(multiple, _pow2(len(batch) + 1)) * grown > token_budget:
            yield batch, length, max(multiple, _pow2(len(batch)))
            batch = []
        batch.append(i)
        length = grown
    if batch:
        yield batch, length, max(multiple, _pow2(len(batch)))


def _suffix_rows(batch: list[_Plan], width: int) -> list[tuple[int, list[int]]]:
    """(cache row, suffix indices) of every suffix row of a batch, fullest first."""
    rows = [(b, g) for b, plan in enumerate(batch) for g in _groups(plan, width)]
    return sorted(rows, key=lambda r: -sum(len(batch[r[0]].suffixes[k]) for k in r[1]))


def _row_arrays(batch, rows, shared: int, width: int, size: int):
    """Inputs of one suffix call: each row holds suffixes of one example side by side."""
    reads = _pow2(max(len(ks) for _, ks in rows))
    a = dict(
        tokens=np.zeros((size, width), np.int32),
        positions=np.zeros((size, width), np.int32),
        limit=np.zeros((size, width), np.int32),  # query sees cached slots < limit
        start=np.full((size, width), shared + width, np.int32),  # ... and new slots from start on
        reads=np.zeros((size, reads), np.int32),
        cache_rows=np.zeros(size, np.int32),
    )
    owners = []
    for r, (b, ks) in enumerate(rows):
        plan, offset = batch[b], 0
        a["cache_rows"][r] = b
        for j, k in enumerate(ks):
            suffix, common = plan.suffixes[k], plan.commons[k]
            sl = slice(offset, offset + len(suffix))
            a["tokens"][r, sl] = suffix
            a["positions"][r, sl] = np.arange(common, common + len(suffix))
            a["limit"][r, sl] = common
            a["start"][r, sl] = shared + offset
            a["reads"][r, j] = offset + len(suffix) - 1
            owners.append((r, j, plan, k))
            offset += len(suffix)
    return a, owners


@nnx.jit(static_argnames=("full_vocab",))
def _last_logits(model, tokens, lengths, verdict_ids, full_vocab=False):
    """Naive path: a plain causal pass per right-padded prefix, logits at its last token."""
    hidden, _ = model.hidden_states(tokens)
    logits = model.logits(jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1))[:, 0]
    return logits if full_vocab else logits[..., verdict_ids]


@nnx.jit(static_argnames=("width",))
def _prefill(model, tokens, width):
    cache = model.init_cache(tokens.shape[0], tokens.shape[1] + width)
    _, cache = model.hidden_states(tokens, cache=cache, cache_index=0)
    return cache


@nnx.jit(static_argnames=("full_vocab",))
def _suffix_logits(model, cache, tokens, positions, limit, start, reads, cache_rows, verdict_ids, full_vocab=False):
    """Verdict logits of suffixes appended after their example's cached shared tokens, each
    seeing only its own slice of the cache and its own earlier tokens."""
    shared = cache.positions.shape[1] - tokens.shape[1]
    slots = jnp.arange(cache.positions.shape[1])[None, None, :]
    query = shared + jnp.arange(tokens.shape[1])[None, :, None]
    mask = (slots < limit[:, :, None]) | ((slots >= start[:, :, None]) & (slots <= query))
    hidden, _ = model.hidden_states(tokens, positions, mask, cache=cache, cache_index=shared, cache_rows=cache_rows)
    logits = model.logits(jnp.take_along_axis(hidden, reads[:, :, None], axis=1))
    return logits if full_vocab else logits[..., verdict_ids]


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


def _naive_probs(guard, items, probs, score_mode, token_budget, multiple, bar):
    """One plain forward per prefix (items: (example, prefix, token ids)), similar lengths batched."""
    verdict_ids = jnp.asarray(guard.adapter.verdict_token_ids)
    for idx, length, size in _length_batches([len(ids) for _, _, ids in items], token_budget, multiple):
        tokens, lengths = np.zeros((size, length), np.int32), np.ones(size, np.int32)
        for b, i in enumerate(idx):
            ids = items[i][2]
            tokens[b, : len(ids)], lengths[b] = ids, len(ids)
        logits = _last_logits(guard.model, jnp.asarray(tokens), jnp.asarray(lengths), verdict_ids,
                              full_vocab=score_mode == "hf_sampling")
        logits = np.asarray(jax.device_get(logits))
        for b, i in enumerate(idx):
            e, k, ids = items[i]
            probs[e][k] = _safe_prob(guard, logits[b], ids, score_mode)
        bar.update(len(idx))


def _shared_probs(guard, plans, probs, score_mode, token_budget, multiple, bar):
    """Per batch of examples: cache the shared tokens once, then score rows of suffixes against it."""
    verdict_ids = jnp.asarray(guard.adapter.verdict_token_ids)
    for idx, shared, size in _length_batches([len(p.shared) for p in plans], token_budget, multiple, step=32):
        batch = [plans[i] for i in idx]
        width = _bucket(max(len(s) for p in batch for s in p.suffixes), 16)
        prefix = np.zeros((size, shared), np.int32)
        for b, plan in enumerate(batch):
            prefix[b, : len(plan.shared)] = plan.shared
        cache = _prefill(guard.model, jnp.asarray(prefix), width=width)
        rows = _suffix_rows(batch, width)
        # rows per call: `token_budget` new tokens, attention scores within 256 x the budget
        per_call = min(token_budget // width, 256 * token_budget // (width * (shared + width)))
        per_call = max(multiple, 2 ** int(math.log2(max(1, per_call))))
        per_call = min(per_call, max(multiple, _pow2(len(rows))))
        for i in range(0, len(rows), per_call):
            arrays, owners = _row_arrays(batch, rows[i : i + per_call], shared, width, per_call)
            logits = _suffix_logits(guard.model, cache, verdict_ids=verdict_ids,
                                    full_vocab=score_mode == "hf_sampling", **arrays)
            logits = np.asarray(jax.device_get(logits))
            for r, j, plan, k in owners:
                probs[plan.example][k] = _safe_prob(guard, logits[r, j], plan.seen[k], score_mode)
        bar.update(sum(len(p.suffixes) for p in batch))


def _score_one_guard(guard, examples, cuts, method, score_mode, token_budget, progress):
    adapter = guard.adapter
    ids = [[adapter.encode(ex["prompt"], ex["response"][:c]) for c in example_cuts]
           for ex, example_cuts in zip(examples, cuts)]
    probs = [np.full(len(c), np.nan, np.float32) for c in cuts]
    multiple = 1 if guard.mesh is None else guard.mesh.shape["data"] * guard.mesh.shape["fsdp"]
    with (tqdm(total=sum(map(len, cuts)), unit="prefix", disable=not progress, desc=f"STAR {method}") as bar,
          jax.set_mesh(guard.mesh) if guard.mesh is not None else contextlib.nullcontext()):
        if method == "naive":
            flat = [(e, k, p) for e, per_example in enumerate(ids) for k, p in enumerate(per_example)]
            _naive_probs(guard, flat, probs, score_mode, token_budget, multiple, bar)
        else:
            plans = [_shared_plan(p, adapter.encode(ex["prompt"], ex["response"]), e)
                     for e, (ex, p) in enumerate(zip(examples, ids))]
            _shared_probs(guard, plans, probs, score_mode, token_budget, multiple, bar)
    return probs


def score(guard, examples, chunk_unit: str = "word", chunk_size: int = 5, method: str = "shared_kv",
          score_mode: str = "raw", token_budget: int = 16384, progress: bool = False) -> list[Trajectory]:
    """STAR trajectories of `examples` (sequence of {"prompt": str, "response": str}).

    `guard` is a Guardrail or a sequence of them (an ensemble: P(safe) averaged; token chunking
    then follows the first guardrail's tokenizer). `score_mode="raw"`: softmax over the two verdict
    logits; `"hf_sampling"`: the same two logits after HF's repetition penalty 1.2, temperature
    0.2, top-k 50 and top-p 0.9 (`HF_SAMPLING`), i.e. what the reference implementation's sampled
    verdicts were drawn from; NaN where neither verdict token survives the filters.
    """
    guards = [guard] if isinstance(guard, Guardrail) else list(guard)
    if not guards:
        raise ValueError("score: no guardrail given")
    if method not in ("shared_kv", "naive"):
        raise ValueError(f"score: method must be 'shared_kv' or 'naive', got {method!r}")
    if score_mode not in ("raw", "hf_sampling"):
        raise ValueError(f"score: score_mode must be 'raw' or 'hf_sampling', got {score_mode!r}")
    for i, ex in enumerate(examples):
        for key in ("prompt", "response"):
            if not isinstance(ex.get(key) if hasattr(ex, "get") else None, str):
                raise ValueError(f"score: example {i} needs a string {key!r}, got {type(ex.get(key)).__name__ if hasattr(ex, 'get') else type(ex).__name__}")
    if chunk_unit == "word":
        cuts = [word_cuts(ex["response"], chunk_size) for ex in examples]
    elif chunk_unit == "token":
        cuts = [token_cuts(ex["response"], guards[0].adapter.tokenizer, chunk_size) for ex in examples]
    else:
        raise ValueError(f"score: chunk_unit must be 'word' or 'token', got {chunk_unit!r}")
    per_guard = [_score_one_guard(g, examples, cuts, method, score_mode, token_budget, progress) for g in guards]
    return [Trajectory(c, np.mean([p[i] for p in per_guard], axis=0)) for i, c in enumerate(cuts)]


def star_fingerprint(guards: Sequence[Guardrail], examples, chunk_unit: str, chunk_size: int, score_mode: str) -> str:
    """Everything a STAR file depends on: data rows, each guardrail's weights, template and verdict
    recipe, chunking and score mode (not the method: shared_kv and naive give the same numbers)."""
    guard_ids = [
        dict(weights=cache.weights_fingerprint(dss.models.checkpoint.resolve_path(g.path)), kind=g.adapter.kind,
             template=g.adapter.tokenizer.chat_template, risk=g.adapter.risk, verdict=g.adapter.verdict_token_ids)
        for g in guards
    ]
    rows = [(ex["prompt"], ex["response"]) for ex in examples]
    return cache.fingerprint("star", rows, guard_ids, chunk_unit, chunk_size, score_mode)


def save_trajectories(path, trajs: Sequence[Trajectory], fp: str) -> None:
    lengths = np.array([len(t.char_ends) for t in trajs], np.int64)
    cache.save(path, "star", fp, dict(
        lengths=lengths,
        char_ends=np.concatenate([np.asarray(t.char_ends, np.int64) for t in trajs]) if trajs else np.zeros(0, np.int64),
        safe_prob=np.concatenate([t.safe_prob for t in trajs]) if trajs else np.zeros(0, np.float32),
    ))


def load_trajectories(path, fp: str) -> list[Trajectory] | None:
    arrays = cache.load(path, "star", fp)
    if arrays is None:
        return None
    bounds = np.concatenate([[0], np.cumsum(arrays["lengths"])])
    return [Trajectory(arrays["char_ends"][a:b].tolist(), arrays["safe_prob"][a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def plot_trajectory(example, traj: Trajectory, out_path, title: str | None = None):
    """The response coloured chunk by chunk by P(safe) (red = unsafe), above the score curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.offsetbox import AnchoredOffsetbox, HPacker, TextArea, VPacker

    cmap = plt.get_cmap("RdYlGn")
    lines, line, width, start = [], [], 0, 0
    for end, p in zip(traj.char_ends, traj.safe_prob):
        for piece_i, piece in enumerate(example["response"][start:end].split("\n")):
            if piece_i > 0 or width + len(piece) > 95:
                lines.append(line)
                line, width = [], 0
            if piece:
                color = cmap(float(np.nan_to_num(p, nan=0.5)))
                line.append(TextArea(piece, textprops=dict(fontsize=8, family="monospace",
                                                           bbox=dict(facecolor=color, edgecolor="none", pad=1))))
                width += len(piece)
        start = end
    lines.append(line)
    rows = [HPacker(children=l, pad=0, sep=0) for l in lines if l]
    text_height = 0.6 + 0.2 * len(rows)
    fig, (ax_text, ax_curve) = plt.subplots(2, 1, figsize=(10, text_height + 2.2), height_ratios=[text_height, 2.2])
    ax_text.axis("off")
    if rows:
        box = VPacker(children=rows, pad=0, sep=3)
        ax_text.add_artist(AnchoredOffsetbox(loc="upper left", child=box, frameon=False, bbox_to_anchor=(0, 1),
                                             bbox_transform=ax_text.transAxes, borderpad=0))
    ax_text.set_title(title or textwrap.shorten(example["prompt"], 110), fontsize=9, loc="left")
    ax_curve.plot(range(1, len(traj.safe_prob) + 1), traj.safe_prob, marker="o", ms=3)
    ax_curve.set(xlabel="chunk", ylabel="P(safe)", ylim=(-0.05, 1.05))
    ax_curve.axhline(0.5, color="gray", lw=0.5, ls="--")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def cached_score(config, examples, workdir) -> list[Trajectory]:
    """STAR of a config's training examples: reused from the STAR file when it matches, else
    computed and written. A stale default file is replaced; a stale file the user named is refused."""
    g, s = config.guardrail, config.star
    mesh = sharding.make_mesh(*g.mesh) if g.mesh else None
    guards = [Guardrail.from_pretrained(p, kind=g.kind, risk=g.risk or None, dtype=g.dtype, mesh=mesh) for p in g.paths]
    fp = star_fingerprint(guards, examples, s.chunk_unit, s.chunk_size, s.score_mode)
    path = Path(s.cache) if s.cache else Path(workdir) / "star.npz"
    try:
        trajs = load_trajectories(path, fp)
    except cache.StaleCacheError:
        if s.cache:
            raise
        log.warning("%s is stale (data or guardrail changed): rescoring", path)
        trajs = None
    if trajs is None:
        start = time.time()
        trajs = score(guards, examples, chunk_unit=s.chunk_unit, chunk_size=s.chunk_size, method=s.method,
                      score_mode=s.score_mode, token_budget=s.token_budget, progress=True)
        if jax.process_index() == 0:
            save_trajectories(path, trajs, fp)
        log.info("STAR: scored %d examples in %.1fs -> %s", len(trajs), time.time() - start, path)
    return trajs


def main(config, workdir, plot: int = 0) -> None:
    """Score the training set of a config (the same rows training will use) into its STAR file."""
    import dss.data
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(dss.models.checkpoint.resolve_path(config.model.path))
    _, examples, stats = dss.data.build_dataset(config.data, tokenizer)
    log.info("data: %s", stats)
    trajs = cached_score(config, examples, workdir)
    out = Path(workdir) / "star_plots"
    for i in range(min(plot, len(trajs))):
        out.mkdir(parents=True, exist_ok=True)
        plot_trajectory(examples[i], trajs[i], out / f"example_{i:04d}.png")
    flat = np.concatenate([t.safe_prob for t in trajs]) if trajs else np.zeros(0)
    print(f"STAR: {len(trajs)} examples, {flat.size} prefixes, mean P(safe) {np.nanmean(flat):.3f}, "
          f"unsafe at the end: {sum(t.safe_prob[-1] < 0.5 for t in trajs)}")


if __name__ == "__main__":
    from absl import flags

    from dss import cli

    flags.DEFINE_integer("plot", 0, "draw the STAR trajectory of the first N examples as PNGs")
    cli.run(lambda config, workdir: main(config, workdir, flags.FLAGS.plot))
