"""A run's orbax checkpoints: named array trees (the trained tree, the optimizer state, what a
method keeps) and meta (step, data positions), saved as a collective (every host calls `save` at
the same step).

Resuming takes the newest checkpoint that reads back whole: an unreadable one (a truncated file,
a disk error) is reported by step and path, set aside as `<step>.unreadable`, and the one before
it is tried. A save that was interrupted (orbax's `*.orbax-checkpoint-tmp*` directory) is
reported, then discarded by orbax.
"""

from __future__ import annotations

import logging

import jax
import orbax.checkpoint as ocp
from etils import epath

from dss import distributed
from dss.errors import UserError

log = logging.getLogger("dss.checkpoints")

TMP_MARK = ".orbax-checkpoint-tmp"


class Checkpoints:
    def __init__(self, directory: epath.Path, keep: int, trees=("params", "opt_state")):
        self.directory, self.trees = epath.Path(directory), tuple(trees)
        if distributed.is_writer() and self.directory.exists():
            for tmp in sorted(p for p in self.directory.iterdir() if TMP_MARK in p.name):
                log.warning("checkpoint %s was being saved when its run was stopped: discarding it (incomplete)", tmp)
        self.manager = ocp.CheckpointManager(self.directory, item_names=(*self.trees, "meta"),
                                             options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def last_good(self) -> str:
        """How a message names the newest checkpoint: "step N in DIR", or "none yet"."""
        step = self.latest()
        return "none yet" if step is None else f"step {step} in {self.directory}"

    def reached_preemption(self, step: int) -> bool:
        """Whether a preemption notice (Cloud TPU maintenance, SIGTERM on a multi-host run) came
        to any host; True on every host at the same step (orbax's synced check)."""
        return self.manager.reached_preemption(step)

    def save(self, step: int, trees: dict, meta: dict) -> None:
        if step in self.manager.all_steps():
            return
        self.manager.save(step, args=ocp.args.Composite(
            **{name: ocp.args.StandardSave(tree) for name, tree in trees.items()}, meta=ocp.args.JsonSave(meta)))

    def restore(self, step: int, like: dict) -> tuple[dict, dict]:
        """The trees saved at `step`, with the shapes, dtypes and shardings of `like`, and meta."""
        abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
        out = self.manager.restore(step, args=ocp.args.Composite(
            **{name: ocp.args.StandardRestore(abstract(tree)) for name, tree in like.items()},
            meta=ocp.args.JsonRestore()))
        return {name: out[name] for name in like}, out.meta

    def restore_newest(self, like: dict) -> tuple[int, dict, dict] | None:
        """(step, trees, meta) of the newest readable checkpoint, None if there is none at all."""
        first_error = None
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                trees, meta = self.restore(step, like)
            except Exception as err:  # orbax/TensorStore raise many kinds for a damaged file
                reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
                first_error = first_error or reason
                log.warning("checkpoint %d in %s is unreadable (%s): setting it aside as %d.unreadable and trying "
                            "the one before", step, self.directory, reason, step)
                self._set_aside(step)
                continue
            if first_error is not None:
                log.warning("resuming from checkpoint %d, the newest readable one", step)
            return step, trees, meta
        if first_error is not None:
            raise UserError(f"{self.directory}: no checkpoint reads back ({first_error}); move the directory away to "
                            "start the run over")
        return None

    def _set_aside(self, step: int) -> None:
        """Rename an unreadable step out of orbax's view (kept for inspection), so the run saves
        that step again when it gets there."""
        if distributed.is_writer():
            (self.directory / str(step)).rename(self.directory / f"{step}.unreadable")
        distributed.barrier(f"dss.checkpoints set aside {step}")
        self.manager.reload()
