"""SafeLoRA: the projection and the choice of modules against a NumPy/PyTorch re-derivation of the
official code (explicit C = V V^T / ||V||_F, `torch.cosine_similarity`), on tiny inputs and end
to end on the tiny config; bad settings refused before any model loads."""

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file

import dss.hub
import dss.models
from baseline_tools import tiny_config, use_shared_cache
from dss import lora
from dss import train as dss_train
from dss.baselines import safelora
from dss.hub import resolve_path
from dss.models.checkpoint import SafetensorsDir
from hf_tiny import make_hf_model

PREFIX = "base_model.model."


@pytest.fixture(scope="module", autouse=True)
def shared_cache(tmp_path_factory):
    use_shared_cache(tmp_path_factory)


def official_projection(aligned: SafetensorsDir, base: SafetensorsDir, tensors: dict, select: str, threshold=0.5,
                        num_layers=10):
    """The official `SafeLoRA.projected_weighted` re-derived: per module C = V V^T / ||V||_F
    formed explicitly, cosine of C B A and B A by torch rounded to 5 decimals, B -> C B where it
    is <= the threshold (number: the num_layers-th smallest cosine)."""
    modules = sorted(k[len(PREFIX):-len(".lora_B.weight")] for k in tensors if k.endswith("lora_B.weight"))
    cos, projected = {}, {}
    for m in modules:
        v = aligned.get(m + ".weight").astype(np.float64) - base.get(m + ".weight").astype(np.float64)
        c = v @ v.T / np.linalg.norm(v, "fro")
        a, b = tensors[f"{PREFIX}{m}.lora_A.weight"].astype(np.float64), tensors[f"{PREFIX}{m}.lora_B.weight"].astype(np.float64)
        projected[m] = c @ b
        cos[m] = round(torch.nn.functional.cosine_similarity(torch.tensor(c @ b @ a).reshape(1, -1),
                                                             torch.tensor(b @ a).reshape(1, -1)).item(), 5)
    limit = threshold if select == "threshold" else np.sort(list(cos.values()))[:num_layers][-1]
    out = dict(tensors)
    for m in modules:
        if cos[m] <= limit:
            out[f"{PREFIX}{m}.lora_B.weight"] = projected[m]
    return out, cos


def perturbed_copy(src, out, scale=0.05, seed=0):
    """An HF directory like `src` with every weight moved a little: a stand-in for the unaligned base."""
    model = dss.models.load_pretrained(src)
    state = nnx.state(model, nnx.Param)
    keys = iter(jax.random.split(jax.random.key(seed), len(jax.tree.leaves(state))))
    nnx.update(model, jax.tree.map(lambda x: x + scale * jax.random.normal(next(keys), x.shape, x.dtype), state))
    return dss.models.save_pretrained(model, out)


def random_adapter(aligned: SafetensorsDir, modules, rank=4, seed=0):
    rng = np.random.default_rng(seed)
    tensors = {}
    for m in modules:
        out_dim, in_dim = aligned.get(m + ".weight").shape
        tensors[f"{PREFIX}{m}.lora_A.weight"] = rng.standard_normal((rank, in_dim)).astype(np.float32)
        tensors[f"{PREFIX}{m}.lora_B.weight"] = rng.standard_normal((out_dim, rank)).astype(np.float32)
    return tensors


@pytest.mark.parametrize("select", ["threshold", "number"])
def test_projection_and_selection_equal_the_official_computation(select, tmp_path):
    make_hf_model("llama", tmp_path / "aligned")
    perturbed_copy(tmp_path / "aligned", tmp_path / "base")
    aligned, base = SafetensorsDir(tmp_path / "aligned"), SafetensorsDir(tmp_path / "base")
    modules = [f"model.layers.{i}.{m}" for i in range(3) for m in ("self_attn.q_proj", "self_attn.o_proj", "mlp.down_proj")]
    tensors = random_adapter(aligned, modules)
    _, cos = official_projection(aligned, base, tensors, "threshold")
    ranked = np.sort(list(cos.values()))
    assert len(set(ranked)) == len(ranked) and ranked[-1] - ranked[0] > 0.05  # distinct, spread cosines
    cfg = tiny_config(**{"safelora.base_path": str(tmp_path / "base"), "safelora.select": select,
                         "safelora.threshold": float(ranked[4] + ranked[5]) / 2, "safelora.num_layers": 3}).safelora
    expected, _ = official_projection(aligned, base, tensors, select, cfg.threshold, cfg.num_layers)
    got = safelora.project(cfg, tmp_path / "aligned", tensors, tmp_path)
    changed = sorted(k for k in tensors if not np.array_equal(got[k], tensors[k]))
    assert changed == sorted(k for k in tensors if expected[k] is not tensors[k])
    assert len(changed) == (5 if select == "threshold" else 3) and all("lora_B" in k for k in changed)
    for k in tensors:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-5, atol=1e-6)
    report = json.loads((tmp_path / safelora.REPORT).read_text())
    assert {r["module"]: r["cosine"] for r in report["modules"]} == cos and report["projected"] == len(changed)


def test_safelora_trains_on_the_tiny_config_and_exports_the_projected_adapter(tmp_path, monkeypatch):
    base = perturbed_copy(resolve_path("tiny:policy"), tmp_path / "base")
    targets = ("q", "v", "down")
    config = tiny_config(**{"lora.enabled": True, "lora.targets": targets, "lora.dropout": 0.0, "train.max_steps": 2,
                            "objective.name": "sft", "safelora.enabled": True, "safelora.base_path": str(base),
                            "safelora.select": "number", "safelora.num_layers": 2})
    dss_train.train(config, tmp_path / "run")

    # the trained (unprojected) adapters from the last checkpoint, projected the official way
    policy = dss.models.load_pretrained(dss.hub.resolve_path(config.model.path))
    restored = ocp.StandardCheckpointer().restore(tmp_path / "run" / "checkpoints" / "2" / "adapters")
    trained = lora.to_peft(policy.config, jax.tree.map(jax.numpy.asarray, restored))
    expected, cos = official_projection(SafetensorsDir(resolve_path(config.model.path)), SafetensorsDir(base), trained,
                                        "number", num_layers=2)
    exported = load_file(tmp_path / "run" / "adapter" / lora.PEFT_WEIGHTS)
    assert sum(not np.array_equal(exported[k], trained[k]) for k in trained) == 2
    for k in trained:
        np.testing.assert_allclose(exported[k], expected[k], rtol=1e-5, atol=1e-7)
    merged, aligned = SafetensorsDir(tmp_path / "run" / "export"), SafetensorsDir(resolve_path(config.model.path))
    s = config.lora.alpha / config.lora.rank
    for k in (k for k in trained if "lora_A" in k):
        name = k[len(PREFIX):-len(".lora_A.weight")] + ".weight"
        want = aligned.get(name) + s * expected[k.replace("lora_A", "lora_B")] @ expected[k]
        np.testing.assert_allclose(merged.get(name), want, atol=1e-6)
    report = json.loads((tmp_path / "run" / safelora.REPORT).read_text())
    assert report["projected"] == 2 and {r["module"]: r["cosine"] for r in report["modules"]} == cos
    assert len(cos) == len(targets) * policy.config.num_layers

    # the finished run's command with other settings projects the checkpoint's adapters again
    config.safelora.update(select="threshold", threshold=2.0)  # every cosine is <= 1: all projected
    monkeypatch.setattr(dss_train, "make_train_step", lambda *a, **k: lambda *a, **k: pytest.fail("trained again"))
    dss_train.train(config, tmp_path / "run")
    everything, _ = official_projection(SafetensorsDir(resolve_path(config.model.path)), SafetensorsDir(base), trained,
                                        "threshold", threshold=2.0)
    exported = load_file(tmp_path / "run" / "adapter" / lora.PEFT_WEIGHTS)
    for k in trained:
        np.testing.assert_allclose(exported[k], everything[k], rtol=1e-5, atol=1e-7)
    assert json.loads((tmp_path / "run" / safelora.REPORT).read_text())["projected"] == len(cos)


@pytest.mark.parametrize("overrides,message", [
    ({"lora.enabled": False}, r"config.lora.enabled = False: config.safelora projects the update of a LoRA run"),
    ({"safelora.base_path": ""}, r"config.safelora.base_path = '': SafeLoRA builds its alignment matrices"),
    ({"safelora.base_path": "/nonexistent/base"}, r"config.safelora.base_path = '/nonexistent/base': no such directory"),
    ({"safelora.select": "layers"}, r"config.safelora.select = 'layers': unknown SafeLoRA selection"),
    ({"safelora.num_layers": 0}, r"config.safelora.num_layers = 0: must be a positive integer"),
])
def test_bad_safelora_settings_are_refused_before_any_model_loads(overrides, message, tmp_path, monkeypatch):
    monkeypatch.setattr(dss.models, "load_pretrained", lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.setattr(dss_train, "AutoTokenizer", None)  # nothing may be read before the checks
    config = tiny_config(**{"lora.enabled": True, "safelora.enabled": True, "safelora.base_path": "tiny:policy",
                            **overrides})
    with pytest.raises(ValueError, match=message):
        dss_train.train(config, tmp_path)


def test_a_base_of_another_shape_is_refused_before_training(tmp_path, monkeypatch):
    make_hf_model("llama", tmp_path / "other")  # q_proj as the policy's, a narrower MLP, another vocabulary
    monkeypatch.setattr(dss_train, "make_train_step", lambda *a, **k: pytest.fail("training started"))
    config = tiny_config(**{"lora.enabled": True, "lora.targets": ("q", "down"), "safelora.enabled": True,
                            "safelora.base_path": str(tmp_path / "other"), "objective.name": "sft"})
    with pytest.raises(ValueError, match=r"config.safelora.base_path = .*other': model.layers.0.mlp.down_proj.weight "
                                         r"has shape \(64, 128\), the aligned model's \(config.model.path\) \(64, 192\)"):
        dss_train.train(config, tmp_path / "run")
