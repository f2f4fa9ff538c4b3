"""Sharded loading and forward on 8 fake CPU devices (mesh data=2, fsdp=2, tensor=2) == one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import dss.models
from dss import sharding
from hf_tiny import VOCAB, make_hf_model


def test_mesh_axes_and_rules():
    mesh = sharding.make_mesh(data=2, fsdp=-1, tensor=2)
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert sharding.partition_spec(("embed", "q_heads", "head_dim"), (64, 4, 16), mesh) == P("fsdp", "tensor", None)
    # a dimension the mesh axis does not divide stays replicated
    assert sharding.partition_spec(("embed", "kv_heads", "head_dim"), (64, 3, 16), mesh) == P("fsdp", None, None)
    assert sharding.partition_spec(("act_batch", "act_seq"), (8, 5), mesh) == P(("data", "fsdp"), None)
    with pytest.raises(ValueError, match="needs 16 devices"):
        sharding.make_mesh(data=4, fsdp=2, tensor=2)
    assert sharding.make_mesh(1, 1, 1).devices.size == 1  # explicit sizes may use fewer devices


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_sharded_equals_single_device(family, tmp_path):
    assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
    make_hf_model(family, tmp_path)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (4, 256)))
    forward = nnx.jit(lambda m, t: m(t))
    ref = np.asarray(forward(dss.models.load_pretrained(tmp_path), tokens))

    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    model = dss.models.load_pretrained(tmp_path, mesh=mesh)
    q = model.layers.attn.q[...]
    assert q.sharding.spec == P(None, "fsdp", "tensor", None)  # every layer, each device a quarter of each
    assert len({s.device for s in q.addressable_shards}) == 8
    assert q.addressable_shards[0].data.shape == (q.shape[0], 32, 2, q.shape[3])

    with jax.set_mesh(mesh):
        logits = forward(model, tokens)
    assert logits.sharding.spec[0] == ("data", "fsdp")
    err = np.abs(np.asarray(logits) - ref).max()
    scale = np.abs(ref).max()
    print(f"{family}: sharded vs single-device max |diff| = {err:.2e} (logits up to {scale:.1f})")
    # float32 partial sums are reassociated across devices: 1e-5 relative to the logit scale
    # (measured: 1.4e-5 absolute on logits of about 8 for llama)
    assert err <= 1e-5 * max(1.0, scale)
