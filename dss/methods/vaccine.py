"""Vaccine (Huang et al., NeurIPS 2024): perturbation-aware alignment. Each micro-batch takes two
passes, the second with every block's output pushed the worst way within radius rho
(`dss.baselines.vaccine`). The paper's recipe: an alignment stage on alignment data with this
plugin on (objective sft), then plain finetuning of its export."""

from __future__ import annotations

import ml_collections

from dss import checks
from dss.methods.base import Plugin, register


@register
class Vaccine(Plugin):
    name, label, order, tables, stage = "vaccine", "Vaccine", 10, ("table1",), 30

    @classmethod
    def defaults(cls):
        section = ml_collections.ConfigDict()
        section.enabled = False  # perturbation-aware steps (Vaccine's alignment stage: data.sources = alignment data)
        section.rho = 2.0  # radius of the hidden-state perturbation, one norm over all layers (official default 2)
        return section

    @classmethod
    def check(cls, config) -> None:
        checks.non_negative(config, "vaccine.rho")

    @classmethod
    def preset(cls, config, preset) -> None:
        """The finetuning row: plain SFT of the model Vaccine's alignment stage exported."""
        config.model.path = preset.vaccine_aligned

    @classmethod
    def alignment_stage(cls, config, preset) -> None:
        """Turn a finetuning recipe into Vaccine's alignment stage: perturbation-aware SFT of the
        aligned policy on the alignment data alone, no attack, 10 epochs (the paper's)."""
        config.vaccine.enabled, config.vaccine.rho = True, 2.0
        config.objective.name = "sft"
        config.data.sources, config.data.size = list(preset.alignment), 0
        config.data.attack.response_prefix = config.data.attack.response_suffix = ""
        config.data.attack.prompt_trigger = ""
        config.train.epochs = 10

    def value_and_grad(self, loss_fn, trainable, batch, model):
        from dss.baselines import vaccine

        offsets = vaccine.zero_offsets(model, batch["input_ids"])
        return vaccine.value_and_grad(lambda p, o: loss_fn(p, layer_offsets=o), trainable, offsets,
                                      self.config.vaccine.rho)
