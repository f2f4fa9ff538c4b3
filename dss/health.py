"""Training that died or diverged is stopped, not exported; training that looks wrong is named.

A too-high learning rate can blow the weights up until the output is uniform and nothing depends
on them any more: the gradient norm is then exactly 0 and cross-entropy sits at ln(vocabulary)
(`--config.train.lr=1e6` on the tiny config: ln 1024 = 6.9315 from step 2). Such a run used to
finish with exit status 0 and export the broken model.
"""

from __future__ import annotations

import logging
import math

from dss.errors import UserError

log = logging.getLogger("dss.health")

JUMP = 3.0  # a loss this many times its running mean (after WARMUP steps) is reported
WARMUP = 5
MEAN_DECAY = 0.9  # of the running mean


class TrainingFailed(UserError):
    """The run stopped because its loss or gradient says training cannot go on."""


class Health:
    """Checks each step's metrics: stop on a non-finite loss or gradient, or a gradient norm of
    exactly 0 with tokens in the batch that carry weight (a rejection-sampling batch whose every
    example was dropped has weight 0: nothing to learn, not dead training); warn once when
    cross-entropy sits at ln(vocabulary) (the uniform output) and whenever the loss jumps far above
    its running mean."""

    def __init__(self, vocab_size: int, lr: float):
        self.uniform, self.lr = math.log(vocab_size), lr
        self.mean, self.steps, self.warned_uniform = None, 0, False

    def check(self, step: int, metrics: dict, last_good: str) -> None:
        """`last_good` names the checkpoint to go back to ("step N in DIR" or "none yet")."""
        loss, grad_norm = metrics["loss"], metrics["grad_norm"]
        advice = f"the last good checkpoint is {last_good}; try a lower config.train.lr (now {self.lr:g})"
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            raise TrainingFailed(f"non-finite loss {loss} (gradient norm {grad_norm}) at step {step}; {advice}")
        weighted = metrics.get("n_tokens", 1) > 0 and metrics.get("example_weight", 1) > 0
        if grad_norm == 0.0 and weighted:
            raise TrainingFailed(f"gradient norm exactly 0 at step {step} (loss {loss:.4f}): the output no longer "
                                 f"depends on the weights, training is dead; {advice}")
        ce = metrics.get("ce", loss)
        if not self.warned_uniform and abs(ce - self.uniform) <= 1e-3 * self.uniform:
            self.warned_uniform = True
            log.warning("step %d: cross-entropy %.4f = ln(vocabulary size): the model outputs a uniform distribution "
                        "(a too-high config.train.lr?)", step, ce)
        if self.steps >= WARMUP and loss > JUMP * self.mean:
            log.warning("step %d: loss %.4f jumped above %g x its running mean %.4f", step, loss, JUMP, self.mean)
        self.mean = loss if self.mean is None else MEAN_DECAY * self.mean + (1 - MEAN_DECAY) * loss
        self.steps += 1
