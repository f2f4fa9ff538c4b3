"""Training end to end on the tiny config: pipeline, export, exact resume, sharding, accumulation."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers
from flax import nnx

import dss.hub
import dss.export
import dss.models
from dss import methods
from dss import train as dss_train
from dss.health import TrainingFailed
from dss.step import make_train_step, micro_batches
from overrides import override

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def tiny_cache(tmp_path_factory):
    os.environ["DSS_CACHE"] = str(tmp_path_factory.mktemp("dss_cache"))
    yield


def tiny_config(**overrides):
    sys.path.insert(0, str(REPO / "configs"))
    import tiny

    return override(tiny.get_config(), **overrides)


def losses(workdir: Path) -> dict[int, float]:
    rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def test_tiny_run_end_to_end(tmp_path):
    config = tiny_config(**{"train.epochs": 1})
    final = dss_train.train(config, tmp_path)
    steps = losses(tmp_path)
    assert sorted(steps) == [1, 2, 3, 4, 5]  # 40 demo rows / global batch 8
    assert all(np.isfinite(v) for v in steps.values())
    assert 0.0 < final["star_weight"] < 1.0 and final["kl"] >= 0
    assert (tmp_path / "star.npz").exists() and (tmp_path / "ref_logp.npz").exists()
    assert (tmp_path / "tensorboard").is_dir()

    export = tmp_path / "export"
    from dss.eval.policy import resolve_model

    assert resolve_model(str(tmp_path)) == (str(export), True)  # dss.eval takes the workdir
    hf = transformers.AutoModelForCausalLM.from_pretrained(export, attn_implementation="eager").eval()
    tok = transformers.AutoTokenizer.from_pretrained(export)
    ids = tok.apply_chat_template([{"role": "user", "content": "Name three colours."}], add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    ours = np.asarray(dss.models.load_pretrained(export)(jnp.asarray([ids])))
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits.numpy()
    assert np.abs(ours - theirs).max() <= 1e-4
    start = dss.models.load_pretrained(dss.hub.resolve_path(config.model.path))
    assert np.abs(np.asarray(start(jnp.asarray([ids]))) - ours).max() > 1e-3  # training changed it


def test_sigterm_then_resume_equals_uninterrupted(tmp_path):
    overrides = {"train.epochs": 2, "train.checkpoint_every": 100, "objective.name": "sft"}
    dss_train.train(tiny_config(**overrides), tmp_path / "straight")
    reference = losses(tmp_path / "straight")
    assert sorted(reference) == list(range(1, 11))

    stopped = tmp_path / "stopped"
    flags = [f"--config.{k}={v}" for k, v in overrides.items()]
    cmd = [sys.executable, "-m", "dss.train", "--config", str(REPO / "configs" / "tiny.py"), "--workdir", str(stopped), *flags]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (stopped / "metrics.jsonl").exists() and len((stopped / "metrics.jsonl").read_text().splitlines()) >= 3:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.2)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    done = losses(stopped)
    assert 3 <= max(done) < 10 and "run the same command to resume" in err
    assert f"checkpoint {max(done)} is saved in" in err  # a clean stop says its checkpoint is safe
    compiled = Path(os.environ["DSS_CACHE"]) / "jax_compile"  # the CLI's persistent compilation cache
    assert compiled.is_dir() and any(compiled.iterdir())

    dss_train.train(tiny_config(**overrides), stopped)  # the same command again resumes
    resumed = losses(stopped)
    assert sorted(resumed) == list(range(1, 11))
    diff = max(abs(resumed[s] - reference[s]) for s in reference)
    print(f"resume: max |loss diff| over 10 steps = {diff:.2e} (stopped after step {max(done)})")
    assert diff <= 1e-6


def test_sharded_training_equals_single_device(tmp_path):
    common = {"train.max_steps": 2, "objective.name": "star_dss", "train.export": False}
    one = dss_train.train(tiny_config(**common, **{"mesh.data": 1, "mesh.fsdp": 1, "mesh.tensor": 1}), tmp_path / "one")
    eight = dss_train.train(tiny_config(**common, **{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}), tmp_path / "eight")
    a, b = losses(tmp_path / "one"), losses(tmp_path / "eight")
    for step in (1, 2):
        assert abs(a[step] - b[step]) <= 1e-5 * max(1.0, abs(a[step]))
    assert abs(one["grad_norm"] - eight["grad_norm"]) <= 1e-4 * one["grad_norm"]


def test_accumulation_equals_one_batch(tmp_path):
    """4 micro-batches normalised by the global token count == one batch of 16."""
    config = tiny_config()
    model = dss.models.load_pretrained(dss.hub.resolve_path(config.model.path))
    rng = np.random.default_rng(0)
    vocab = model.config.vocab_size
    mask = np.zeros((16, 48), bool)
    for b in range(16):  # rows with very different numbers of response tokens
        mask[b, rng.integers(5, 20) : rng.integers(25, 48)] = True
    batch = {"input_ids": rng.integers(0, vocab, (16, 48)).astype(np.int32),
             "targets": rng.integers(0, vocab, (16, 48)).astype(np.int32), "loss_mask": mask,
             "star_weight": rng.uniform(size=(16, 48)).astype(np.float32),
             "ref_logp": -rng.uniform(1, 6, (16, 48)).astype(np.float32)}
    # plain SGD (new params = params - gradient) compares the accumulated gradients themselves;
    # Adam's first step, g / (|g| + eps), would blow float32 reordering up on near-zero entries
    tx = optax.sgd(1.0)
    results = []
    for accum in (1, 4):
        graphdef, params = nnx.split(dss.models.load_pretrained(dss.hub.resolve_path(config.model.path)))
        step = make_train_step(graphdef, tx, methods.build(config), accum)
        params, _, metrics = step(params, tx.init(params), jax.tree.map(jnp.asarray, batch),
                                  {"frozen": None, "reference": None}, {}, 0)
        results.append((params, {k: float(v) for k, v in metrics.items()}))
    (p1, m1), (p4, m4) = results
    # float32 sums in another order: 1e-6 relative (measured 2.6e-7)
    assert abs(m1["loss"] - m4["loss"]) <= 1e-6 * m1["loss"]
    assert abs(m1["grad_norm"] - m4["grad_norm"]) <= 1e-5 * m1["grad_norm"]
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


@pytest.mark.parametrize("objective", ["sft", "rs", "deep_token", "kl_only"])
def test_baseline_objectives_run(tmp_path, objective):
    final = dss_train.train(tiny_config(**{"train.max_steps": 1, "objective.name": objective, "train.export": False}), tmp_path)
    assert np.isfinite(final["loss"])
    assert (tmp_path / "star.npz").exists() == (objective == "rs")
    assert (tmp_path / "ref_logp.npz").exists() == (objective in ("deep_token", "kl_only"))


def test_non_finite_loss_stops_with_last_good_checkpoint(tmp_path):
    config = tiny_config(**{"train.lr": 1e30, "train.warmup_ratio": 0.0, "train.checkpoint_every": 1,
                            "objective.name": "sft", "train.clip": 1e30})
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingFailed, match=r"non-finite loss .* last good checkpoint is step \d"):
        dss_train.train(config, tmp_path)
    assert signal.getsignal(signal.SIGTERM) is handler  # the run gave its signal handlers back
    ckpts = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert ckpts and max(ckpts) == max(losses(tmp_path))
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("objective,estimator", [("sft", "k2"), ("rs", "k2"), ("deep_token", "k2"),
                                                 ("star_dss", "k1"), ("star_dss", "k2"), ("star_dss", "k3"),
                                                 ("star_dss", "full"), ("kl_only", "k3")])
def test_every_step_equals_its_logits_objective_without_whole_logits(objective, estimator):
    """The train step's loss and gradients (terms from hidden states, a chunk of positions at a
    time) equal the public logits-based objective's, and no [B, T, V] array is in its program."""
    from dss import objectives

    config = tiny_config(**{"objective.name": objective, "objective.kl_estimator": estimator})
    model = dss.models.load_pretrained(dss.hub.resolve_path(config.model.path))
    graphdef, params = nnx.split(model)
    ref_params = jax.tree.map(lambda x: x * 1.01, params)
    rng = np.random.default_rng(1)
    b, t, v = 2, 512, model.config.vocab_size
    tokens, targets = (jnp.asarray(rng.integers(0, v, (b, t)), jnp.int32) for _ in range(2))
    batch = {"input_ids": tokens, "targets": targets, "loss_mask": jnp.asarray(rng.random((b, t)) < 0.7),
             "star_weight": jnp.asarray(rng.random((b, t)), jnp.float32),
             "example_weight": jnp.asarray([0.0, 1.0], jnp.float32),
             "ref_logp": objectives.token_logp(nnx.merge(graphdef, ref_params)(tokens), targets)}
    obj = config.objective
    full = estimator == "full" and objective in ("star_dss", "kl_only")

    def chunked(p):
        m = nnx.merge(graphdef, p)
        r = nnx.merge(graphdef, ref_params)
        ref = (r.logits, r.hidden_states(tokens)[0]) if full else None
        logp, kl = objectives.hidden_token_terms(m.logits, m.hidden_states(tokens)[0], targets, ref)
        return methods.build(config)[0].loss(logp, kl, batch, None)[0]

    def whole(p):
        logits, args = nnx.merge(graphdef, p)(tokens), (targets, batch["loss_mask"])
        ref_logits = nnx.merge(graphdef, ref_params)(tokens) if full else None
        if objective == "sft":
            return objectives.sft_loss(logits, *args)[0]
        if objective == "rs":
            return objectives.rs_loss(logits, *args, batch["example_weight"])[0]
        if objective == "deep_token":
            return objectives.deep_token_loss(logits, *args, batch["ref_logp"])[0]
        kw = dict(ref_logp=batch["ref_logp"], ref_logits=ref_logits, kl_estimator=estimator)
        if objective == "star_dss":
            return objectives.star_dss_loss(logits, *args, batch["star_weight"], kl_coef=obj.kl_coef, **kw)[0]
        return objectives.kl_only_loss(logits, *args, **kw)[0]

    np.testing.assert_allclose(float(chunked(params)), float(whole(params)), rtol=1e-5)
    for x, y in zip(jax.tree.leaves(jax.grad(chunked)(params)), jax.tree.leaves(jax.grad(whole)(params))):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5, rtol=1e-4)
    program = str(jax.make_jaxpr(jax.grad(chunked))(params))
    assert f"[{b},{t},{v}]" not in program and f"[{b},256,{v}]" in program


def test_full_kl_step_never_materialises_whole_logits():
    """The full-KL step equals the plain logits formula, and no [B, T, V] array is in its program."""
    from dss import objectives

    config = tiny_config()
    model = dss.models.load_pretrained(dss.hub.resolve_path(config.model.path))
    graphdef, params = nnx.split(model)
    ref_params = jax.tree.map(lambda x: x * 1.01, params)
    rng = np.random.default_rng(0)
    b, t, v = 2, 512, model.config.vocab_size
    tokens = jnp.asarray(rng.integers(0, v, (b, t)))
    targets = jnp.asarray(rng.integers(0, v, (b, t)))

    def chunked(p):
        m, r = nnx.merge(graphdef, p), nnx.merge(graphdef, ref_params)
        return objectives.hidden_token_terms(m.logits, m.hidden_states(tokens)[0], targets,
                                             (r.logits, r.hidden_states(tokens)[0]))

    def plain(p):
        return objectives.logp_and_full_kl(nnx.merge(graphdef, p)(tokens), nnx.merge(graphdef, ref_params)(tokens),
                                           targets)

    for a, b_ in zip(chunked(params), plain(params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b_), atol=2e-5)
    loss = lambda f: (lambda p: sum(x.sum() for x in f(p)))
    g1, g2 = jax.grad(loss(chunked))(params), jax.grad(loss(plain))(params)
    for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-4, rtol=1e-3)
    program = str(jax.make_jaxpr(jax.grad(loss(chunked)))(params))
    assert f"[{b},{t},{v}]" not in program and f"[{b},256,{v}]" in program
    assert f"[{b},{t},{v}]" in str(jax.make_jaxpr(jax.grad(loss(plain)))(params))


# Llama 3.1/3.2 Instruct's date logic: "Today Date" from date_string, else from the clock.
DATED_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- if strftime_now is defined %}"
    "{%- set date_string = strftime_now('%d %b %Y') %}{%- else %}{%- set date_string = '26 Jul 2024' %}"
    "{%- endif %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\n\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\nToday Date: ' + date_string + '\n\n<|eot_id|>' }}"
    "{%- for m in messages %}"
    "{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)


def _on_day(monkeypatch, day: str):
    """Move the clock that both dss and transformers' `strftime_now` read to `day` (YYYY-MM-DD)."""
    import datetime

    from transformers.utils import chat_template_utils

    from dss import templating

    moment = datetime.datetime.fromisoformat(day + "T23:59:00")

    class FakeDatetime(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return moment

    monkeypatch.setattr(chat_template_utils, "datetime", FakeDatetime)
    monkeypatch.setattr(templating, "today", lambda: moment.strftime(templating.DATE_FORMAT))


@pytest.mark.slow
def test_resume_on_the_next_day_logs_the_uninterrupted_losses(tmp_path, monkeypatch):
    """A STAR-DSS run on a dated template, stopped on one day and resumed on the next, trains on the
    first day's tokens; without the recorded template variables it would not (the control)."""
    import shutil

    policy = tmp_path / "dated_policy"
    shutil.copytree(dss.hub.resolve_path("tiny:policy"), policy)
    tok = transformers.AutoTokenizer.from_pretrained(policy)
    tok.chat_template = DATED_TEMPLATE
    tok.save_pretrained(policy)
    overrides = {"model.path": str(policy), "train.epochs": 1, "train.export": False, "train.checkpoint_every": 100}

    _on_day(monkeypatch, "2026-03-01")
    dss_train.train(tiny_config(**overrides), tmp_path / "straight")
    reference = losses(tmp_path / "straight")
    dss_train.train(tiny_config(**overrides, **{"train.max_steps": 2}), tmp_path / "stopped")
    shutil.copytree(tmp_path / "stopped", tmp_path / "control")
    (tmp_path / "control" / "template_vars.json").unlink()  # as if nothing had been recorded

    _on_day(monkeypatch, "2026-03-02")
    assert "02 Mar 2026" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    dss_train.train(tiny_config(**overrides), tmp_path / "stopped")
    resumed = losses(tmp_path / "stopped")
    assert sorted(resumed) == sorted(reference) == [1, 2, 3, 4, 5]
    assert max(abs(resumed[s] - reference[s]) for s in reference) <= 1e-6
    assert json.loads((tmp_path / "stopped" / "template_vars.json").read_text()) == {"date_string": "01 Mar 2026"}

    dss_train.train(tiny_config(**overrides), tmp_path / "control")
    control = losses(tmp_path / "control")
    assert max(abs(control[s] - reference[s]) for s in (3, 4, 5)) > 1e-4  # the prompts carry the other date
    with pytest.raises(ValueError, match=r"config.template.date_string = '05 May 2026', but .*template_vars.json "
                                         r"fixed it to '01 Mar 2026'"):
        dss_train.train(tiny_config(**overrides, **{"template.date_string": "05 May 2026"}), tmp_path / "stopped")


@pytest.mark.parametrize("remote", [False, True])
def test_checkpoint_and_export_dirs_anywhere(tmp_path, monkeypatch, remote):
    """checkpoint_dir / export_dir outside the workdir (etils paths, gs:// for users); the remote
    branch copies a locally written export file by file, config.json last."""
    if remote:  # a local path taken down the remote (gs://) branch
        monkeypatch.setattr(dss.export, "_is_local", lambda path: False)
    config = tiny_config(**{"train.max_steps": 2, "objective.name": "sft", "train.checkpoint_dir": str(tmp_path / "ck"),
                            "train.export_dir": str(tmp_path / "models" / "ex")})
    dss_train.train(config, tmp_path / "run")
    assert (tmp_path / "ck" / "2").is_dir() and not (tmp_path / "run" / "checkpoints").exists()
    export = tmp_path / "models" / "ex"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in export.iterdir()}
    assert not (tmp_path / "run" / "export").exists()
    hf = transformers.AutoModelForCausalLM.from_pretrained(export)
    assert hf.config.num_hidden_layers == 2


def test_micro_batches_span_every_data_shard():
    from dss import sharding

    mesh = sharding.make_mesh(1, 4, 1)
    rows = jax.device_put(jnp.arange(16.0).reshape(16, 1), jax.sharding.NamedSharding(mesh, jax.P(("data", "fsdp"))))
    micro = jax.jit(lambda x: micro_batches(x, 2))(rows)
    assert micro[:, :, 0].tolist() == [[0, 2, 4, 6, 8, 10, 12, 14], [1, 3, 5, 7, 9, 11, 13, 15]]
    for shard in micro.addressable_shards:  # each device keeps its own 4 rows, 2 in each micro-batch
        assert shard.data.shape == (2, 2, 1)
        first = int(shard.data[0, 0, 0])
        assert sorted(np.asarray(shard.data).ravel().tolist()) == list(range(first, first + 4))
