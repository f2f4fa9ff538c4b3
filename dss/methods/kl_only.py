"""KL-only: hold the policy to the starting model on every response token (STAR-DSS with w = 0,
kl_coef 1); the data's content is never imitated."""

from __future__ import annotations

from dss.methods.base import register
from dss.methods.star_dss import _HeldToReference, label_kl


@register
class KLOnly(_HeldToReference):
    name, label, order = "kl_only", "KL-only", 95

    def loss(self, logp, full_kl, batch, normalizer):
        from dss import objectives

        return objectives.kl_only_from_terms(logp, label_kl(self.config, logp, full_kl, batch), batch["loss_mask"],
                                             normalizer)
