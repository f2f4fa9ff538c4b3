"""SFT: cross-entropy on every response token (the finetuning every defence is compared with)."""

from __future__ import annotations

from dss.methods.base import Objective, register


@register
class SFT(Objective):
    name, label, order, tables = "sft", "SFT", 0, ("table1", "table2")

    def loss(self, logp, full_kl, batch, normalizer):
        from dss import objectives

        return objectives.sft_from_terms(logp, batch["loss_mask"], normalizer)
