"""The model under evaluation: chat prompts in, response text (or option log-likelihoods) out.

Wraps `dss.generate` and the model's own chat template so benchmarks deal in strings. Loading is
lazy (a rerun whose outputs all exist never loads the model) and `close()` frees the weights
before a guardrail judge loads its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import dss.hub
import dss.models
from dss import sharding
from dss.buckets import bucket_length, next_pow2
from dss.errors import UserError
from dss.generate import chat_prompt_tokens, generate
from dss.workdir import resolve_model  # noqa: F401  (its old home; dss.workdir needs no JAX)

__all__ = ["Policy", "resolve_model"]


@nnx.jit(static_argnames=("width",))
def _continuation_logprobs(model, tokens, starts, lengths, width):
    """Sum of log p(tokens[b, t]) for starts[b] <= t < lengths[b] (right-padded rows, causal), with
    logits computed only at the `width` positions before each continuation token."""
    hidden, _ = model.hidden_states(tokens)
    steps = jnp.arange(width)[None, :]
    targets_at = jnp.minimum(starts[:, None] + steps, tokens.shape[1] - 1)  # [B, W]
    h = jnp.take_along_axis(hidden, (targets_at - 1)[:, :, None], axis=1)
    logp = jax.nn.log_softmax(model.logits(h).astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logp, jnp.take_along_axis(tokens, targets_at, axis=1)[:, :, None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(starts[:, None] + steps < lengths[:, None], picked, 0.0), axis=-1)


def eos_ids(tokenizer, model_dir: Path) -> list[int]:
    """End-of-sequence ids: the tokenizer's EOS plus generation_config.json's (end-of-turn tokens)."""
    ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    gen_config = Path(model_dir) / "generation_config.json"
    if gen_config.exists():
        eos = json.loads(gen_config.read_text()).get("eos_token_id")
        ids += eos if isinstance(eos, list) else [] if eos is None else [eos]
    return sorted(set(ids))


class Policy:
    """An HF checkpoint (`model_path`, already resolved) with its tokenizer and decoding settings.

    Stops at the tokenizer's EOS, the ids in the model's generation_config.json, and `stop_tokens`.
    `mesh`: (data, fsdp, tensor) sizes for `dss.sharding.make_mesh`, or () for one device.
    """

    def __init__(self, model_path: str, tokenizer: str = "", system_prompt: str = "", dtype: str = "float32",
                 mesh: Sequence[int] = (), temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 stop_tokens: Sequence[str] = (), batch_size: int = 32, template_vars: dict | None = None):
        self.model_path, self.tokenizer_path = model_path, tokenizer or model_path
        self.system = system_prompt or None
        self.dtype, self.mesh_shape = dtype, tuple(mesh)
        self.sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)
        self.stop_tokens, self.batch_size = tuple(stop_tokens), int(batch_size)
        self.template_vars = dict(template_vars or {})  # the run's fixed template variables (dss.templating)
        self._model = self._tokenizer = self._mesh = self._eos = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path)
        return self._tokenizer

    @property
    def model(self):
        if self._model is None:
            local = dss.hub.resolve_path(self.model_path)
            self._mesh = sharding.make_mesh(*self.mesh_shape) if self.mesh_shape else None
            self._model = dss.models.load_pretrained(local, dtype=self.dtype, mesh=self._mesh)
            self._eos = self._eos_ids(local / "generation_config.json")
        return self._model

    def close(self) -> None:
        """Drop the weights (the tokenizer stays)."""
        self._model = self._mesh = None

    def _eos_ids(self, gen_config: Path) -> list[int]:
        tok, ids = self.tokenizer, eos_ids(self.tokenizer, gen_config.parent)
        for token in self.stop_tokens:
            token_id = tok.convert_tokens_to_ids(token)
            if token_id is None or token_id == tok.unk_token_id:
                raise UserError(f"stop token {token!r} is not a single token of {self.tokenizer_path}")
            ids.append(token_id)
        return sorted(set(ids))

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None and pad < self.model.config.vocab_size else 0

    def prompt_tokens(self, prompt: str, prefill: str | None = None) -> list[int]:
        return chat_prompt_tokens(self.tokenizer, prompt, system=self.system, prefill=prefill, **self.template_vars)

    def generate(self, prompts: Sequence[str], prefills: Sequence[str | None], max_new_tokens: int,
                 seed: int = 0) -> list[str]:
        """Decoded new text per prompt (special tokens dropped), after the prompt's prefill."""
        model = self.model
        ids = [self.prompt_tokens(p, f) for p, f in zip(prompts, prefills)]
        out = generate(model, ids, max_new_tokens=max_new_tokens, eos_ids=self._eos, seed=seed,
                       pad_id=self._pad_id(), mesh=self._mesh, **self.sampling)
        return [self.tokenizer.decode(o, skip_special_tokens=True) for o in out]

    def continuation_logprobs(self, prompts: Sequence[str], prefills: Sequence[str | None],
                              continuations: Sequence[str]) -> list[float]:
        """log p(continuation | chat prompt + prefill), summed over the continuation's tokens.

        The context and the continuation are tokenised together, so a token that merges across
        their boundary is scored as part of the continuation."""
        rows = []
        for prompt, prefill, continuation in zip(prompts, prefills, continuations):
            context = self.prompt_tokens(prompt, prefill)
            full = self.prompt_tokens(prompt, (prefill or "") + continuation)
            start = next((i for i, (a, b) in enumerate(zip(context, full)) if a != b), len(context))
            if start >= len(full) or start == 0:
                raise ValueError(f"continuation {continuation!r} adds no tokens after its context")
            rows.append((full, start))
        model, scores = self.model, np.zeros(len(rows), np.float32)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
        for first in range(0, len(order), self.batch_size):
            chunk = order[first : first + self.batch_size]
            size = next_pow2(len(chunk))
            length = bucket_length(max(len(rows[i][0]) for i in chunk), 64)
            width = next_pow2(max(len(rows[i][0]) - rows[i][1] for i in chunk))
            tokens = np.zeros((size, length), np.int32)
            starts, lengths = np.ones(size, np.int32), np.ones(size, np.int32)
            for b, i in enumerate(chunk):
                full, start = rows[i]
                tokens[b, : len(full)], starts[b], lengths[b] = full, start, len(full)
            if self._mesh is None:
                out = _continuation_logprobs(model, tokens, starts, lengths, width=width)
            else:
                with jax.set_mesh(self._mesh):
                    out = _continuation_logprobs(model, tokens, starts, lengths, width=width)
            scores[chunk] = np.asarray(out)[: len(chunk)]
        return scores.tolist()
