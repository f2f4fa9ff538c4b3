"""Bad checkpoints fail loudly, naming the file and the key."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import dss.models
from hf_tiny import make_hf_model


@pytest.fixture
def ckpt(tmp_path):
    make_hf_model("qwen2", tmp_path)
    return tmp_path


def _edit_tensors(path, edit):
    file = path / "model.safetensors"
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})
    return file


def test_unknown_model_type(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config\.json.*unsupported model_type 'gpt2'"):
        dss.models.load_pretrained(ckpt)


def test_missing_tensor(ckpt):
    _edit_tensors(ckpt, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(KeyError, match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'") as e:
        dss.models.load_pretrained(ckpt)
    assert str(ckpt) in str(e.value)


def test_wrong_shape(ckpt):
    key = "model.layers.0.self_attn.k_proj.weight"
    file = _edit_tensors(ckpt, lambda t: t.update({key: np.zeros((8, 64), np.float32)}))
    with pytest.raises(ValueError, match=rf"{file}.*'{key}'.*shape \(8, 64\), expected \(32, 64\)"):
        dss.models.load_pretrained(ckpt)


def test_unexpected_tensor(ckpt):
    file = _edit_tensors(ckpt, lambda t: t.update({"model.layers.0.extra.weight": np.zeros(3, np.float32)}))
    with pytest.raises(ValueError, match=rf"{file}.*unexpected.*model\.layers\.0\.extra\.weight"):
        dss.models.load_pretrained(ckpt)


def test_corrupt_safetensors(ckpt):
    file = ckpt / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{file}"):
        dss.models.load_pretrained(ckpt)


def test_not_a_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        dss.models.load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json: invalid JSON"):
        dss.models.load_pretrained(tmp_path)


def test_unreachable_hub_id_names_the_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"no-such-org/no-such-model: not a local directory, and fetching"):
        dss.models.load_pretrained("no-such-org/no-such-model")
