"""STAR-DSS, dynamic safety shaping: sum_t [w_t CE_t + (1 - w_t) kl_coef KL_t] / N, with w_t the
STAR score (the guardrail's P(safe) of the response prefix ending in token t's chunk)."""

from __future__ import annotations

import numpy as np

from dss import checks, star_config
from dss.methods.base import Objective, register

KL_ESTIMATORS = ("k1", "k2", "k3", "full")


def label_kl(config, logp, full_kl, batch):
    """The per-token KL term: the exact one the step computed (full), else the label estimator."""
    from dss import objectives

    estimator = config.objective.kl_estimator
    return full_kl if estimator == "full" else objectives.label_kl(logp, batch["ref_logp"], batch["loss_mask"],
                                                                   estimator)


class _HeldToReference(Objective):
    """An objective with a KL term to the starting model: k1/k2/k3 need its label log-probs once
    per dataset, the exact KL (full) runs it in the step."""

    def needs_ref_logp(self) -> bool:
        return self.config.objective.kl_estimator != "full"

    def needs_reference_model(self) -> bool:
        return self.config.objective.kl_estimator == "full"


@register
class StarDSS(_HeldToReference):
    name, label, order, tables = "star_dss", "STAR-DSS", 90, ("table1", "table2")

    scores_star = True

    @classmethod
    def settings(cls) -> dict:
        return {"kl_coef": 0.5,  # lambda: weight of the KL term where STAR says unsafe
                "kl_estimator": "k2"}  # k1 | k2 | k3 | full (full runs the reference model in the step); kl_only too

    @classmethod
    def check_settings(cls, config) -> None:
        checks.one_of(config, "objective.kl_estimator", KL_ESTIMATORS, "KL estimator")
        checks.non_negative(config, "objective.kl_coef")

    @classmethod
    def check(cls, config) -> None:
        star_config.check_star_config(config, f"objective {cls.name!r}")

    def example_inputs(self, run, data, name):
        """Each target's STAR weight: its chunk's score where it is a response token, 1 on
        earlier turns' tokens (train_on=all: they are data)."""
        from dss.segments import token_weights

        weights = []
        for enc, traj in zip(data.encoded, run.star(data, name)):
            w = np.ones(len(enc.targets), np.float32)
            scored = enc.loss_mask & ((enc.response_spans[:, 1] >= 0) | enc.after_response)
            w[scored] = token_weights(traj, enc.response_spans[scored], enc.after_response[scored])
            weights.append(w)
        return {"star_weight": weights}

    def loss(self, logp, full_kl, batch, normalizer):
        from dss import objectives

        kl = label_kl(self.config, logp, full_kl, batch)
        return objectives.star_dss_from_terms(logp, kl, batch["loss_mask"], batch["star_weight"],
                                              self.config.objective.kl_coef, normalizer)
