"""Deterministic, checkpointable, fixed-shape training batches.

Epoch e visits the examples in the permutation drawn from (seed, e) alone, so any position can be
recomputed from (epoch, step) and a resumed run sees exactly the batches it would have seen.
Rows are right-padded to a multiple of 64 tokens (or one fixed length) so that few shapes
compile. Per-example inputs computed once per dataset (STAR weights, reference log-probs, RS
weights) ride along, gathered into the batch layout by the example indices of each step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from dss.buckets import bucket_length
from dss.data.chat import Encoded


def scatter_per_token(values: Sequence[np.ndarray], example_index: np.ndarray, length: int, fill=0.0) -> np.ndarray:
    """[B, length] array whose row b holds `values[example_index[b]]` (one entry per target of
    that example) left-aligned, `fill` after it and in rows with example_index -1; the dtype is
    that of `values[0]`."""
    dtype = np.asarray(values[0]).dtype
    out = np.full((len(example_index), length), fill, dtype)
    for b, i in enumerate(example_index):
        if i >= 0:
            out[b, : len(values[i])] = values[i]
    return out


class StepBatcher:
    """Batches of `batch_size` examples by training step; iterate it, or ask `batch(step)`.

    Each batch holds `input_ids` (model inputs: Encoded.input_ids[:-1]) and `targets` (int32
    [B, T], both right-padded with `pad_id`), `loss_mask` (bool [B, T], False after each example)
    and every per-example input (`per_example`: name -> one value per example, a scalar (-> [B])
    or an array with one entry per target (-> [B, T], 0 after it)). `indices(step)` gives the
    examples of a batch.

    drop_last (default): an epoch has len // batch_size steps and skips the left-over examples (a
    different few each epoch, as every epoch is reshuffled); otherwise the last batch is filled up
    with empty rows (index -1, loss_mask False). `length` fixes T; else T is the batch's longest
    example rounded up to `multiple`.
    """

    def __init__(self, encoded: Sequence[Encoded], per_example: Mapping[str, Sequence] | None, batch_size: int,
                 seed: int = 0, pad_id: int = 0, multiple: int = 64, length: int | None = None,
                 drop_last: bool = True):
        self.encoded, self.batch_size, self.seed = encoded, batch_size, seed
        self.pad_id, self.multiple, self.length = pad_id, multiple, length
        self.per_example = dict(per_example or {})
        n = len(encoded)
        self.steps_per_epoch = n // max(batch_size, 1) if drop_last else -(-n // max(batch_size, 1))
        if batch_size < 1 or self.steps_per_epoch < 1:
            raise ValueError(f"{n} examples make no batch of batch_size={batch_size}")
        longest = max(len(e.targets) for e in encoded)
        if length is not None and longest > length:
            raise ValueError(f"an example has {longest} targets, more than the fixed batch length {length}")
        for name, values in self.per_example.items():
            if len(values) != n:
                raise ValueError(f"per_example[{name!r}] has {len(values)} entries for {n} examples")
            for i, v in enumerate(values):
                if np.ndim(v) and len(v) != len(encoded[i].targets):
                    raise ValueError(f"per_example[{name!r}][{i}] has {len(v)} entries for "
                                     f"{len(encoded[i].targets)} targets")
        self._inputs = [e.input_ids[:-1] for e in encoded]
        self._targets = [e.targets for e in encoded]
        self._masks = [e.loss_mask for e in encoded]
        self.epoch, self.step = 0, 0
        self._order = (None, None)

    def order(self, epoch: int) -> np.ndarray:
        """Example indices of `epoch` in visiting order (-1 fills up the last batch)."""
        if self._order[0] != epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.encoded))
            size = self.steps_per_epoch * self.batch_size
            self._order = (epoch, np.concatenate([perm, np.full(max(size - len(perm), 0), -1)])[:size])
        return self._order[1]

    def indices(self, step: int) -> np.ndarray:
        """Example indices (int32 [B], -1 for filler rows) of the batch of global step `step`
        (0-based): batch step % steps_per_epoch of epoch step // steps_per_epoch."""
        epoch, within = divmod(step, self.steps_per_epoch)
        return self.order(epoch)[within * self.batch_size : (within + 1) * self.batch_size].astype(np.int32)

    def batch(self, step: int, rows: Sequence[int] | None = None) -> dict[str, np.ndarray]:
        """The batch of global step `step` (0-based), rows in the order of `indices(step)`; with
        `rows`, only those rows of it (a host builds just the rows its devices hold). T is the
        whole batch's either way."""
        index = self.indices(step)
        length = self.length or bucket_length(max(len(self.encoded[i].targets) for i in index if i >= 0), self.multiple)
        if rows is not None:
            index = index[np.asarray(rows, np.int64)]
        batch = {
            "input_ids": scatter_per_token(self._inputs, index, length, self.pad_id),
            "targets": scatter_per_token(self._targets, index, length, self.pad_id),
            "loss_mask": scatter_per_token(self._masks, index, length, False),
        }
        for name, values in self.per_example.items():
            if np.ndim(values[0]):
                batch[name] = scatter_per_token(values, index, length)
            else:
                batch[name] = np.asarray([values[i] if i >= 0 else 0 for i in index], np.asarray(values[0]).dtype)
        return batch

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return self.take()

    def take(self, rows: Sequence[int] | None = None) -> dict[str, np.ndarray]:
        """The next batch (only `rows` of it, if given), and move on."""
        out = self.batch(self.epoch * self.steps_per_epoch + self.step, rows)
        self.epoch, self.step = divmod(self.epoch * self.steps_per_epoch + self.step + 1, self.steps_per_epoch)
        return out

    def state(self) -> dict[str, int]:
        """The position of the next batch (plus what it depends on), for checkpoints."""
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed,
                "num_examples": len(self.encoded), "batch_size": self.batch_size}

    def restore(self, state: Mapping[str, int]) -> None:
        """Continue from a `state()`; ValueError if the data or batching changed since."""
        for key in ("seed", "num_examples", "batch_size"):
            if int(state[key]) != self.state()[key]:
                raise ValueError(f"batcher state has {key}={state[key]}, this batcher {self.state()[key]}: "
                                 "the data or batch settings changed since the checkpoint")
        if not 0 <= int(state["step"]) < self.steps_per_epoch:
            raise ValueError(f"batcher state step={state['step']} is outside an epoch of {self.steps_per_epoch} steps")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
