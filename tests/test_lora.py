"""LoRA: adapters beside the frozen base, checked against transformers / PEFT on the merged and
the adapter-only exports, against the full model's gradient through the chain rule, and end to
end on the tiny config (only adapters trained and checkpointed, exact resume)."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
import transformers
from flax import nnx
from safetensors.numpy import load_file

import dss.hub
import dss.models
from baseline_tools import RECORD_GRADS, random_batch, tiny_config, use_shared_cache
from dss import lora, methods, sharding, train_checks
from dss.step import make_train_step
from dss import train as dss_train
from dss.models.checkpoint import SafetensorsDir
from dss.models.transformer import LORA_TARGETS, Lora, lora_delta
from hf_tiny import VOCAB, hf_logits, make_hf_model

ALL = tuple(LORA_TARGETS)


@pytest.fixture(scope="module", autouse=True)
def shared_cache(tmp_path_factory):
    use_shared_cache(tmp_path_factory)


def lora_cfg(**kw):
    return ml_collections.ConfigDict({"rank": 4, "alpha": 8.0, "dropout": 0.0, "targets": ALL, **kw})


def randomised(weights, seed=1, std=0.05):
    """Adapters with random b (fresh ones have b = 0), each array keeping its sharding."""
    rng = np.random.default_rng(seed)
    noisy = lambda x: jax.device_put((np.asarray(x) + std * rng.standard_normal(x.shape)).astype(x.dtype), x.sharding)
    return {t: {"a": noisy(ab["a"]), "b": noisy(ab["b"])} for t, ab in weights.items()}


def losses(workdir):
    return {r["step"]: r["loss"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())}


@pytest.mark.parametrize("family", ["qwen3", "llama_linear_tied"])  # head_dim != hidden/heads; biases, tied
def test_merged_and_peft_exports_give_our_adapted_logits(family, tmp_path):
    hf = make_hf_model(family, tmp_path / "base")
    model = dss.models.load_pretrained(tmp_path / "base")
    cfg = lora_cfg()
    weights = randomised(lora.init(cfg, model, seed=0))
    tokens = np.random.default_rng(0).integers(0, VOCAB, (2, 24))
    ours = np.asarray(model(jnp.asarray(tokens), lora=lora.apply(cfg, weights)))
    assert np.abs(ours - hf_logits(hf, tokens)).max() > 1e-2  # the adapters change the model

    dss.models.save_pretrained(lora.merged(model, cfg, weights), tmp_path / "merged")
    merged_hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged", attn_implementation="eager")
    np.testing.assert_allclose(hf_logits(merged_hf.eval(), tokens), ours, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(np.asarray(model(jnp.asarray(tokens))),  # `merged` left the model alone
                                  np.asarray(dss.models.load_pretrained(tmp_path / "base")(jnp.asarray(tokens))))

    # the PEFT layout, read back by hand: every exported weight is W + alpha/r * lora_B @ lora_A
    tensors = lora.to_peft(model.config, weights)
    adapter = lora.save_peft(tensors, cfg, model.config, str(tmp_path / "base"), tmp_path / "adapter")
    saved, base, merged = load_file(adapter / lora.PEFT_WEIGHTS), SafetensorsDir(tmp_path / "base"), SafetensorsDir(tmp_path / "merged")
    assert len(saved) == 2 * len(ALL) * model.config.num_layers
    for key in saved:
        if ".lora_A." in key:
            module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            b, a = saved[key.replace("lora_A", "lora_B")], saved[key]
            expected = base.get(module + ".weight") + cfg.alpha / cfg.rank * b @ a
            np.testing.assert_allclose(merged.get(module + ".weight"), expected, atol=1e-6)
    back = lora.from_peft(model.config, saved, weights)
    for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(weights)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    import peft  # the test extra installs it: PEFT itself must load what we write

    config = json.loads((adapter / lora.PEFT_CONFIG).read_text())
    assert config["target_modules"] == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    with_adapter = peft.PeftModel.from_pretrained(hf, adapter).eval()
    np.testing.assert_allclose(hf_logits(with_adapter, tokens), ours, atol=1e-4, rtol=0)


def test_fresh_adapters_leave_the_base_model_and_are_seeded():
    model = dss.models.load_pretrained(dss.hub.resolve_path("tiny:policy"))
    cfg = lora_cfg()
    weights = lora.init(cfg, model, seed=0)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, model.config.vocab_size, (2, 16)))
    np.testing.assert_array_equal(np.asarray(model(tokens, lora=lora.apply(cfg, weights))), np.asarray(model(tokens)))
    for target, ab in weights.items():
        fan_in = np.prod(lora.kernel(model, target).shape[1 : 1 + ab["a"].ndim - 2])
        a = np.asarray(ab["a"])
        assert not np.asarray(ab["b"]).any() and 0.5 < np.abs(a).max() * np.sqrt(fan_in) <= 1.0
    again, other = lora.init(cfg, model, seed=0), lora.init(cfg, model, seed=1)
    assert np.array_equal(again["q"]["a"], weights["q"]["a"]) and not np.array_equal(other["q"]["a"], weights["q"]["a"])


def test_dropout_drops_each_input_at_the_rate_and_rescales_the_rest():
    x = jnp.asarray(np.random.default_rng(0).uniform(1, 2, (4, 8, 16)), jnp.float32)
    eye = jnp.eye(16)  # a = b = I: the delta is scale * dropout(x)
    weights = {"q": {"a": eye, "b": eye}}
    delta = lambda key, rate=0.5: np.asarray(lora_delta(x, Lora(weights, 2.0, rate, key), "q", 1, jnp.float32))
    first, second = delta(jax.random.key(0)), delta(jax.random.key(1))
    kept = first != 0
    assert 0.4 < kept.mean() < 0.6 and (kept != (second != 0)).any()  # another key, another mask
    np.testing.assert_allclose(first[kept], 2.0 * np.asarray(x)[kept] / 0.5, rtol=1e-6)
    np.testing.assert_array_equal(delta(jax.random.key(0)), first)
    np.testing.assert_allclose(np.asarray(lora_delta(x, Lora(weights, 2.0), "q", 1, jnp.float32)), 2.0 * np.asarray(x))


@pytest.mark.parametrize("objective,mesh_shape", [("star_dss", (2, 2, 2)), ("vaccine", (1, 1, 1))])
def test_lora_step_is_the_full_step_through_the_chain_rule(objective, mesh_shape):
    """The adapters sit like their kernels (rank axis replicated); one LoRA step's loss is the
    merged model's, its gradients s * dL/dW b^T and s * a^T dL/dW with dL/dW the full-finetuning
    step's at the merged weights (full KL: the reference is the base); the base is not touched."""
    mesh = sharding.make_mesh(*mesh_shape)
    vaccine = objective == "vaccine"  # the plugin on SFT (rho 2), the other case STAR-DSS with the full KL
    config = tiny_config(**{"objective.name": "sft" if vaccine else objective, "objective.kl_estimator": "full",
                            "vaccine.enabled": vaccine, "vaccine.rho": 2.0})
    model = dss.models.load_pretrained(dss.hub.resolve_path(config.model.path), mesh=mesh)
    cfg = lora_cfg()
    weights = randomised(lora.init(cfg, model, 0, mesh))
    for target, ab in weights.items():
        spec = lora.kernel(model, target)[...].sharding.spec
        n = ab["a"].ndim - 1
        assert ab["a"].sharding.spec == jax.P(*spec[:n], None) and ab["b"].sharding.spec == jax.P(spec[0], None, *spec[n:])
        assert any(spec) or mesh.size == 1  # the mesh really splits these kernels
    graphdef, base = nnx.split(model)
    base_before = jax.tree.map(np.asarray, base)
    batch = random_batch(model.config.vocab_size, b=8, t=32)
    batch["star_weight"] = jnp.asarray(np.random.default_rng(2).random((8, 32)), jnp.float32)
    merged = jax.tree.map(jnp.copy, nnx.state(lora.merged(model, cfg, weights)))  # donated: shares nothing with base
    a_b = jax.tree.map(np.asarray, weights)
    with jax.set_mesh(mesh):
        full_step = make_train_step(graphdef, RECORD_GRADS, methods.build(config), 2)
        config.lora.update(enabled=True, **cfg)
        lora_step = make_train_step(graphdef, RECORD_GRADS, methods.build(config), 2)
        copy = jax.tree.map(jnp.copy, weights)
        reference = None if vaccine else base
        _, grads, m_lora = lora_step(copy, RECORD_GRADS.init(copy), batch, {"frozen": base, "reference": reference}, {}, 0)
        _, full_grads, m_full = full_step(merged, RECORD_GRADS.init(merged), batch, {"frozen": None, "reference": reference},
                                          {}, 0)
    np.testing.assert_allclose(float(m_lora["loss"]), float(m_full["loss"]), rtol=1e-5)
    assert abs(float(m_lora["loss"]) - float(m_full["loss"])) < 1e-3 * float(m_full["loss"])
    s = cfg.alpha / cfg.rank
    for target in weights:
        a, b = a_b[target]["a"], a_b[target]["b"]
        layers, rank = a.shape[0], a.shape[-1]
        gw = np.asarray(full_grads["layers"]["attn" if target in "qkvo" else "mlp"][target][...]).reshape(layers, a[0].size // rank, -1)
        a2, b2 = a.reshape(layers, -1, rank), b.reshape(layers, rank, -1)
        np.testing.assert_allclose(np.asarray(grads[target]["a"]).reshape(a2.shape), s * np.einsum("lio,lro->lir", gw, b2),
                                   atol=1e-5, rtol=1e-3)
        np.testing.assert_allclose(np.asarray(grads[target]["b"]).reshape(b2.shape), s * np.einsum("lir,lio->lro", a2, gw),
                                   atol=1e-5, rtol=1e-3)
        assert np.abs(np.asarray(grads[target]["b"])).max() > 1e-4
    for x, y in zip(jax.tree.leaves(base_before), jax.tree.leaves(base)):
        np.testing.assert_array_equal(x, np.asarray(y))


def test_lora_trains_on_the_tiny_config_and_resumes_exactly(tmp_path):  # with the session's compilation cache, as the CLI
    overrides = {"lora.enabled": True, "lora.targets": ALL, "lora.dropout": 0.1, "train.epochs": 1,
                 "train.checkpoint_every": 100, "objective.name": "sft"}
    dss_train.train(tiny_config(**overrides), tmp_path / "straight")
    reference = losses(tmp_path / "straight")
    dss_train.train(tiny_config(**overrides, **{"train.max_steps": 2, "train.export": False}), tmp_path / "stopped")
    assert sorted(losses(tmp_path / "stopped")) == [1, 2]
    dss_train.train(tiny_config(**overrides), tmp_path / "stopped")
    resumed = losses(tmp_path / "stopped")
    assert sorted(resumed) == sorted(reference) == [1, 2, 3, 4, 5]
    assert max(abs(resumed[s] - reference[s]) for s in reference) <= 1e-6
    assert len(set(reference.values())) == 5

    # a checkpoint holds the adapters and their optimizer state, nothing of the base
    step = tmp_path / "straight" / "checkpoints" / "5"
    assert {p.name for p in step.iterdir() if p.is_dir()} == {"adapters", "opt_state", "meta"}
    policy = dss.models.load_pretrained(dss.hub.resolve_path("tiny:policy"))
    shapes = {tuple(x.shape) for t in ALL for x in (lora.init(lora_cfg(rank=8), policy, 0)[t][k] for k in "ab")}
    saved = ocp.StandardCheckpointer().metadata(step / "opt_state").item_metadata
    assert {tuple(m.shape) for m in jax.tree.leaves(saved) if m.shape} == shapes

    # the export is the base plus the adapter, as transformers and PEFT both see it
    export, adapter = tmp_path / "straight" / "export", tmp_path / "straight" / "adapter"
    weights = lora.from_peft(policy.config, load_file(adapter / lora.PEFT_WEIGHTS), lora.init(lora_cfg(rank=8), policy, 0))
    assert np.abs(np.asarray(weights["q"]["b"])).max() > 0  # trained
    tokens = np.random.default_rng(0).integers(0, policy.config.vocab_size, (2, 16))
    ours = np.asarray(policy(jnp.asarray(tokens), lora=lora.apply(tiny_config().lora, weights)))
    hf = transformers.AutoModelForCausalLM.from_pretrained(export).eval()
    np.testing.assert_allclose(hf_logits(hf, tokens), ours, atol=1e-4, rtol=0)
    assert np.abs(np.asarray(policy(jnp.asarray(tokens))) - ours).max() > 1e-4


@pytest.mark.parametrize("overrides,message", [
    ({"lora.targets": ("q", "qkv")}, r"config.lora.targets = \('q', 'qkv'\): 'qkv' matches no module; use names among q, k, v, o, gate, up, down"),
    ({"lora.targets": ()}, r"config.lora.targets = \(\): no module to adapt"),
    ({"lora.rank": 0}, r"config.lora.rank = 0: must be a positive integer"),
    ({"lora.dropout": 1.0}, r"config.lora.dropout = 1.0: a rate in \[0, 1\)"),
])
def test_bad_lora_settings_are_refused_before_any_model_loads(overrides, message, tmp_path, monkeypatch):
    monkeypatch.setattr(dss.models, "load_pretrained", lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.setattr(dss_train, "AutoTokenizer", None)  # nothing may be read before the checks
    with pytest.raises(ValueError, match=message):
        dss_train.train(tiny_config(**{"lora.enabled": True, **overrides}), tmp_path)
    train_checks.check_train_config(tiny_config(**overrides))  # LoRA off: its settings are not read
