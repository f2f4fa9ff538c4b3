"""RS, static safety shaping: each example's cross-entropy scaled by one weight from the
guardrail's verdict on its whole response (hard 0/1 at P(safe) 0.5, or soft P(safe))."""

from __future__ import annotations

import numpy as np

from dss import checks, star_config
from dss.methods.base import Objective, register

RS_MODES = ("hard", "soft")


@register
class RS(Objective):
    name, label, order, tables = "rs", "RS", 60, ("table1",)

    scores_star = True

    @classmethod
    def settings(cls) -> dict:
        return {"rs_mode": "hard"}  # rs: hard (0/1 at P(safe) 0.5) | soft (P(safe))

    @classmethod
    def check_settings(cls, config) -> None:
        checks.one_of(config, "objective.rs_mode", RS_MODES, "rs mode")

    @classmethod
    def check(cls, config) -> None:
        star_config.check_star_config(config, f"objective {cls.name!r}")

    def example_inputs(self, run, data, name):
        from dss.segments import rs_weight

        mode = self.config.objective.rs_mode
        return {"example_weight": [np.float32(rs_weight(t.safe_prob, mode)) for t in run.star(data, name)]}

    def loss(self, logp, full_kl, batch, normalizer):
        from dss import objectives

        return objectives.rs_from_terms(logp, batch["loss_mask"], batch["example_weight"], normalizer)
