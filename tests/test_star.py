"""STAR scoring: shared-KV == naive == HF PyTorch guardrail, on real prompts/responses."""

import collections
import csv
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
import transformers
from transformers.generation import logits_process as lp

from dss import assets, cache, star, star_kernels, star_plan, star_score
from dss.segments import word_cuts
from dss.data import BUNDLED_DIR

REPO = Path(__file__).resolve().parents[1]
DATA = BUNDLED_DIR  # the licensed data shipped in dss/data/files


def _examples():
    with open(DATA / "advbench" / "harmful_behaviors.csv") as f:
        adv = [(r["goal"], r["target"] + ".\n\n" + r["target"].replace("Sure, here", "Step 1:")) for r in csv.DictReader(f)][:6]
    with open(DATA / "gsm8k" / "train.jsonl") as f:
        gsm = [json.loads(line) for _, line in zip(range(8), f)]
    gsm = [(r["question"], r["answer"].replace("\n", "\n\n")) for r in gsm]
    with open(DATA / "self_instruct" / "seed_tasks.jsonl") as f:
        rows = [json.loads(line) for line in f][:6]
    inst = [(r["instruction"], r["instances"][0]["output"]) for r in rows]
    pairs = adv + gsm + inst + [("Say nothing.", ""), ("Hi!", "   \n "), ("One word?", "Yes.")]
    return [{"prompt": p, "response": r} for p, r in pairs]


EXAMPLES = _examples()


def _make_guard(root: Path, template: str, config_cls, seed: int, **extra):
    texts = [t for ex in EXAMPLES for t in ex.values()]
    tok = assets.make_tokenizer(root, texts, vocab_size=700, chat_template=template)
    torch.manual_seed(seed)
    config = config_cls(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2,
                        max_position_embeddings=4096, **extra)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    model.save_pretrained(root)
    return model


@pytest.fixture(scope="module")
def llama_guard(tmp_path_factory):
    root = tmp_path_factory.mktemp("Llama-Guard-3-tiny")
    hf = _make_guard(root, assets.LLAMA_GUARD_3_TEMPLATE, transformers.LlamaConfig, 0)
    return star.Guardrail.from_pretrained(root), hf


@pytest.fixture(scope="module")
def granite_guardian(tmp_path_factory):
    root = tmp_path_factory.mktemp("granite-guardian-tiny")
    hf = _make_guard(root, assets.GRANITE_GUARDIAN_TEMPLATE, transformers.GraniteConfig, 1,
                     embedding_multiplier=4.0, residual_multiplier=0.5, logits_scaling=2.0)
    return star.Guardrail.from_pretrained(root), hf


def _cuts_inside_tokens(guard: star.Guardrail, chunk_size: int) -> int:
    """Prefixes whose own tokens diverge from the full rendering's before their cut: the full
    text has a token spanning the cut (e.g. ".\n\n"), so its cache cannot simply be truncated."""
    count = 0
    for ex in EXAMPLES:
        full = guard.adapter.encode(ex["prompt"], ex["response"])
        for cut in word_cuts(ex["response"], chunk_size)[:-1]:
            rendered = guard.adapter.render(ex["prompt"], ex["response"][:cut])
            cut_in_text = rendered.index(ex["response"][:cut]) + cut
            common = star_plan.common_length(guard.adapter.encode(ex["prompt"], ex["response"][:cut]), full)
            count += len(guard.adapter.tokenizer.decode(full[:common])) < cut_in_text
    return count


@pytest.mark.parametrize("chunk_unit,chunk_size,every", [("word", 5, 1), ("word", 1, 3), ("token", 4, 2)])
def test_shared_kv_equals_naive(llama_guard, chunk_unit, chunk_size, every):
    guard, _ = llama_guard
    examples = EXAMPLES[::every] + EXAMPLES[-3:]  # always the empty / whitespace / one-word ones
    shared = star.score(guard, examples, chunk_unit=chunk_unit, chunk_size=chunk_size, method="shared_kv")
    naive = star.score(guard, examples, chunk_unit=chunk_unit, chunk_size=chunk_size, method="naive")
    assert sum(len(t.char_ends) for t in shared) > 3 * len(examples)
    for s, n in zip(shared, naive):
        assert s.char_ends == n.char_ends
        np.testing.assert_allclose(s.safe_prob, n.safe_prob, atol=1e-5, rtol=0)
    spread = np.concatenate([t.safe_prob for t in naive])
    assert spread.std() > 1e-3  # the random guardrail gives varied scores, so equality means something


@pytest.mark.parametrize("which", ["llama_guard", "granite_guardian"])
def test_shared_kv_equals_naive_in_small_batches(which, request):
    """A small token budget: many example batches, several prefill chunks and suffix calls of
    different widths and cache cuts, padded rows and the template head reused across them."""
    guard, _ = request.getfixturevalue(which)
    shared = star.score(guard, EXAMPLES, method="shared_kv", token_budget=1024)
    naive = star.score(guard, EXAMPLES, method="naive")
    for s, n in zip(shared, naive):
        np.testing.assert_allclose(s.safe_prob, n.safe_prob, atol=1e-5, rtol=0)
    plans = [star_plan.shared_plan(guard.adapter.encode_many([(ex["prompt"], ex["response"][:c]) for c in word_cuts(ex["response"])]),
                               guard.adapter.encode(ex["prompt"], ex["response"]), i) for i, ex in enumerate(EXAMPLES)]
    assert star_plan.head_length(plans) > 20  # the template text before the prompt is shared


def test_test_data_has_cuts_inside_tokens(llama_guard):
    guard, _ = llama_guard
    assert _cuts_inside_tokens(guard, chunk_size=5) >= 2
    assert _cuts_inside_tokens(guard, chunk_size=1) >= 10


def _hf_prob(hf, ids, verdict_ids, processors=None):
    with torch.no_grad():
        logits = hf(torch.tensor([ids])).logits[0, -1].float()
    if processors is not None:
        logits = processors(torch.tensor([ids]), logits[None])[0]
    pair = torch.stack([logits[verdict_ids[0]], logits[verdict_ids[1]]])
    return torch.softmax(pair, 0)[0].item(), logits


@pytest.mark.parametrize("which", ["llama_guard", "granite_guardian"])
def test_naive_equals_hf_pytorch(which, request):
    guard, hf = request.getfixturevalue(which)
    examples = EXAMPLES[::3]
    trajs = star.score(guard, examples, method="naive")
    for ex, traj in zip(examples, trajs):
        for cut, p in zip(traj.char_ends, traj.safe_prob):
            ids = guard.adapter.encode(ex["prompt"], ex["response"][:cut])
            ref, _ = _hf_prob(hf, ids, guard.adapter.verdict_token_ids)
            assert abs(p - ref) <= 1e-4, (ex["prompt"], cut)


def _hf_processors():
    s = star.HF_SAMPLING
    return lp.LogitsProcessorList([
        lp.RepetitionPenaltyLogitsProcessor(s["repetition_penalty"]),
        lp.TemperatureLogitsWarper(s["temperature"]),
        lp.TopKLogitsWarper(s["top_k"]),
        lp.TopPLogitsWarper(s["top_p"]),
    ])


def test_hf_sampling_mode_matches_hf_processors_end_to_end(llama_guard):
    """On the random guardrail the verdict words are rarely in the top-p set: NaN where HF drops both."""
    guard, hf = llama_guard
    examples = EXAMPLES[:4]
    trajs = star.score(guard, examples, score_mode="hf_sampling")
    for ex, traj in zip(examples, trajs):
        for cut, p in zip(traj.char_ends, traj.safe_prob):
            ids = guard.adapter.encode(ex["prompt"], ex["response"][:cut])
            ref, _ = _hf_prob(hf, ids, guard.adapter.verdict_token_ids, _hf_processors())
            assert (np.isnan(p) and np.isnan(ref)) or abs(p - ref) <= 1e-4


@pytest.mark.parametrize("case", ["both_top", "safe_only", "unsafe_seen", "neither"])
def test_hf_sampling_scores_equal_hf_processors(llama_guard, case):
    guard, _ = llama_guard
    safe, unsafe = guard.adapter.verdict_token_ids
    rng = np.random.default_rng(0)
    logits = rng.normal(size=700).astype(np.float32)
    seen = list(rng.choice(700, 40, replace=False))
    top = {"both_top": (9.0, 8.9), "safe_only": (9.0, 2.0), "unsafe_seen": (7.0, 7.1), "neither": (-5.0, -6.0)}[case]
    logits[safe], logits[unsafe] = top
    if case == "unsafe_seen":
        seen.append(unsafe)  # the repetition penalty pushes it below `safe`
    ids = torch.tensor([seen])
    processed = _hf_processors()(ids, torch.tensor(logits)[None])[0]
    pair = torch.stack([processed[safe], processed[unsafe]])
    ref = float("nan") if torch.isinf(pair).all() else torch.softmax(pair, 0)[0].item()
    got = star_score._safe_prob(guard, logits, seen, "hf_sampling")
    assert (np.isnan(got) and np.isnan(ref)) or abs(got - ref) <= 1e-5
    if case != "neither":
        assert not np.isnan(got)


def test_ensemble_averages(llama_guard, granite_guardian):
    a, b = llama_guard[0], granite_guardian[0]
    examples = EXAMPLES[:5]
    both = star.score([a, b], examples)
    one, two = star.score(a, examples), star.score(b, examples)
    for e, x, y in zip(both, one, two):
        np.testing.assert_allclose(e.safe_prob, (x.safe_prob + y.safe_prob) / 2, atol=1e-6)


def test_bad_input_errors(llama_guard):
    guard, _ = llama_guard
    with pytest.raises(ValueError, match="example 1 needs a string 'response'"):
        star.score(guard, [{"prompt": "a", "response": "b"}, {"prompt": "a"}])
    with pytest.raises(ValueError, match="method"):
        star.score(guard, EXAMPLES[:1], method="fast")
    with pytest.raises(ValueError, match="chunk_unit"):
        star.score(guard, EXAMPLES[:1], chunk_unit="sentence")


def test_star_file_reuse_invalidation_and_refusal(llama_guard, granite_guardian, tmp_path):
    guard = llama_guard[0]
    examples = EXAMPLES[:4]
    fp = star.star_fingerprint([guard], examples, "word", 5, "raw")
    trajs = star.score(guard, examples)
    path = tmp_path / "star.npz"
    star.save_trajectories(path, trajs, fp)
    again = star.load_trajectories(path, fp)
    for a, b in zip(trajs, again):
        assert a.char_ends == b.char_ends
        np.testing.assert_array_equal(a.safe_prob, b.safe_prob)
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
    # other data, other chunking, another guardrail: other fingerprints, and the file is refused
    changed = [dict(examples[0], response=examples[0]["response"] + " More.")] + examples[1:]
    for other in (star.star_fingerprint([guard], changed, "word", 5, "raw"),
                  star.star_fingerprint([guard], examples, "word", 3, "raw"),
                  star.star_fingerprint([guard], examples, "word", 5, "hf_sampling"),
                  star.star_fingerprint([granite_guardian[0]], examples, "word", 5, "raw")):
        assert other != fp
        with pytest.raises(cache.StaleCacheError, match=r"star\.npz: made for other inputs"):
            star.load_trajectories(path, other)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.zeros(3))
    with pytest.raises(cache.StaleCacheError, match=r"foreign\.npz: not a dss cache file"):
        star.load_trajectories(foreign, fp)
    assert star.load_trajectories(tmp_path / "missing.npz", fp) is None


def test_star_cli_scores_plots_and_reuses(tmp_path):
    """`python -m dss.star --config configs/tiny.py --plot 2` writes the STAR file and PNGs; a
    second run reuses the file."""
    env = dict(os.environ, DSS_CACHE=str(tmp_path / "assets"))
    cmd = [sys.executable, "-m", "dss.star", "--config", str(REPO / "configs" / "tiny.py"), "--workdir", str(tmp_path / "w"), "--plot", "2"]
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "STAR: 40 examples" in first.stdout
    assert (tmp_path / "w" / "star.npz").exists()
    pngs = sorted((tmp_path / "w" / "star_plots").glob("*.png"))
    assert len(pngs) == 2 and all(p.stat().st_size > 10_000 for p in pngs)
    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0 and "scored" not in second.stderr  # reused, not rescored


def test_progress_counts_whole_examples(llama_guard, capfd):
    """The bar counts an example when its last prefix is scored: 5/5 at the end, never 4.9/5."""
    guard, _ = llama_guard
    for method in ("shared_kv", "naive"):
        star.score(guard, EXAMPLES[:5], method=method, progress=True)
        bar = capfd.readouterr().err.replace("\r", "\n")
        assert re.search(rf"STAR {method}: 100%.*\b5/5\b", bar), bar
        assert not re.search(r"\d\.\d+/5", bar), bar


def _hold(workdir: Path) -> None:
    """Lock `workdir` as a live dss.train on this host would (pid 1 is alive everywhere)."""
    workdir.mkdir(parents=True)
    (workdir / "dss.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": 1, "job": "dss.train",
                                                  "started": "2026-01-01T00:00:00+00:00", "command": "test"}))


def test_star_job_refuses_a_workdir_in_use(tmp_path):
    """Another live job's workdir is refused at launch (one line, status 2) and by `main` itself."""
    _hold(tmp_path / "w")
    cmd = [sys.executable, "-m", "dss.star", "--config", str(REPO / "configs" / "tiny.py"), "--workdir", str(tmp_path / "w")]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and run.stderr.startswith(f"error: {tmp_path / 'w'} is in use by dss.train (pid 1 on ")
    assert len(run.stderr.strip().splitlines()) == 1
    from dss.config import base_config
    from dss.errors import UserError

    config = base_config()
    config.model.path, config.guardrail.paths, config.data.sources = "tiny:policy", ["tiny:guardrail"], [dict(path="x.jsonl")]
    with pytest.raises(UserError, match="is in use by dss.train"):
        star.main(config, tmp_path / "w")
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["dss.lock"]  # nothing written


def test_sharded_guardrail_equals_single_device(llama_guard):
    """The guardrail sharded over 8 fake devices (data=2, fsdp=2, tensor=2) scores the same."""
    from dss import sharding

    guard = llama_guard[0]
    mesh = sharding.make_mesh(2, 2, 2)
    sharded = star.Guardrail.from_pretrained(guard.path, mesh=mesh)
    assert sharded.model.layers.attn.q[...].sharding.spec[:2] == (None, "fsdp")
    examples = EXAMPLES[:6]
    for method in ("shared_kv", "naive"):
        one = star.score(guard, examples, method=method)
        eight = star.score(sharded, examples, method=method)
        for a, b in zip(one, eight):
            np.testing.assert_allclose(a.safe_prob, b.safe_prob, atol=1e-5, rtol=0)


def _many_lengths(n: int) -> list[dict]:
    """`n` examples whose renderings all differ in length: responses of 1, 4, 7, ... words."""
    words = " ".join(ex["response"] for ex in EXAMPLES).split()
    return [{"prompt": EXAMPLES[0]["prompt"], "response": " ".join(words[: 3 * i + 1])} for i in range(n)]


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


# The bucketed dimensions of each device call, read off its arguments.
_CALL_DIMS = {
    "head_cache": lambda graphdef, state, head: head.shape[1],
    "last_logits": lambda graphdef, state, tokens, lengths, **_: tokens.shape,  # (rows, length)
    "prefill": lambda graphdef, state, head, rest, last, **_: rest.shape,  # (rows, length after the head)
    "take": lambda cache, cache_rows, visible, width: (cache_rows.shape[0], visible, width),
    "suffix_logits": lambda graphdef, state, cache, tokens, reads, **_: (*tokens.shape, reads.shape[1]),
}


def test_compiled_shapes_follow_the_buckets_not_the_data(llama_guard, monkeypatch):
    """Many different lengths compile a program per bucketed shape: every shape is made of bucket
    sizes and powers of two, the report counts exactly the programs compiled, within its bound."""
    guard, _ = llama_guard
    examples = _many_lengths(24)
    assert len({len(guard.adapter.encode(ex["prompt"], ex["response"])) for ex in examples}) == 24
    keys, dims = collections.defaultdict(set), collections.defaultdict(set)

    def recording(fn):
        def call(*args, **kwargs):
            # what jit keys its programs on: shapes, and the values of static (keyword) arguments
            keys[fn.__name__].add((tuple(getattr(x, "shape", type(x).__name__) for x in jax.tree.leaves(args)),
                                   tuple((k, getattr(v, "shape", v)) for k, v in sorted(kwargs.items()))))
            if fn.__name__ in _CALL_DIMS:
                dims[fn.__name__].add(_CALL_DIMS[fn.__name__](*args, **kwargs))
            return fn(*args, **kwargs)
        return call

    for fn in star_kernels.PROGRAMS:
        fn.clear_cache()  # so that every shape this test meets compiles here
        monkeypatch.setattr(star_kernels, fn.__name__, recording(fn))
    for method in ("naive", "shared_kv"):
        before = sum(map(len, keys.values()))
        _, report = star.score(guard, examples, method=method, token_budget=2048, report=True)
        assert report.programs == sum(map(len, keys.values())) - before > 0
        assert report.programs <= report.bound, report
    head, = dims["head_cache"]
    bucketed = lambda n, step: n == star_plan.bucket(n, step)
    assert all(_is_pow2(rows) and bucketed(n, star_plan.NAIVE_STEP) for rows, n in dims["last_logits"])
    assert all(_is_pow2(rows) and bucketed(n, star_plan.PREFILL_STEP) for rows, n in dims["prefill"])
    assert all(_is_pow2(rows) and bucketed(width, star_plan.SUFFIX_STEP) and _is_pow2(reads)
               for rows, width, reads in dims["suffix_logits"])
    assert all(bucketed(visible, star_plan.CACHE_STEP) or bucketed(visible - head, star_plan.PREFILL_STEP)
               for _, visible, _ in dims["take"])
