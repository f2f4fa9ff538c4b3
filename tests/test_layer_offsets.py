"""`layer_offsets` (Vaccine's hidden-state perturbation) adds to each block's output, checked
against the HF PyTorch model with the same offsets added by forward hooks."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import dss.models
from hf_tiny import VOCAB, hf_logits, make_hf_model


@pytest.mark.parametrize("name", ["llama", "gemma3_text"])
def test_offsets_match_hf_with_hooks_on_each_decoder_layer(name, tmp_path):
    hf = make_hf_model(name, tmp_path)
    ours = dss.models.load_pretrained(tmp_path)
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, VOCAB, (2, 24))
    cfg = ours.config
    offsets = (0.5 * rng.standard_normal((cfg.num_layers, 2, 24, cfg.hidden_size))).astype(np.float32)

    def hook(i):
        def add(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            hidden = hidden + torch.as_tensor(offsets[i])
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
        return add

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(hf.model.layers)]
    expected = hf_logits(hf, tokens)
    for h in handles:
        h.remove()
    plain = hf_logits(hf, tokens)
    assert np.abs(expected - plain).max() > 1e-2  # the offsets change the logits
    got = np.asarray(ours(jnp.asarray(tokens), layer_offsets=jnp.asarray(offsets)))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(np.asarray(ours(jnp.asarray(tokens), layer_offsets=jnp.zeros_like(offsets))),
                                  np.asarray(ours(jnp.asarray(tokens))))
