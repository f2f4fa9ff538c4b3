"""SafeLoRA (Hsu et al., NeurIPS 2024): after a LoRA run, project the update of the modules least
like the alignment direction (aligned minus base weights) onto it (`dss.baselines.safelora`)."""

from __future__ import annotations

import ml_collections

from dss import checks
from dss.errors import UserError
from dss.methods.base import Plugin, register
from dss.methods.lora import LoRA

SELECT = ("threshold", "number")  # the official `select_layers_type`


@register
class SafeLoRA(Plugin):
    name, label, order, tables, stage = "safelora", "SafeLoRA", 20, ("table1",), 20

    @classmethod
    def defaults(cls):
        section = ml_collections.ConfigDict()
        section.enabled = False  # after training, project the LoRA update of dissimilar modules onto the alignment subspace
        section.base_path = ""  # the unaligned base of model.path (e.g. meta-llama/Llama-3.2-1B); required when enabled
        section.select = "number"  # which modules: number (the num_layers least similar) | threshold (official default: number)
        section.threshold = 0.5  # threshold: project where cosine(dW, C dW) <= this (official default 0.5)
        section.num_layers = 10  # number: how many modules are projected (official num_proj_layers, default 10)
        return section

    @classmethod
    def check(cls, config) -> None:
        settings = config.safelora
        if not config.lora.enabled:
            raise UserError("config.lora.enabled = False: config.safelora projects the update of a LoRA run; "
                            "set config.lora.enabled=True")
        if not settings.base_path:
            raise UserError("config.safelora.base_path = '': SafeLoRA builds its alignment matrices from the unaligned "
                            "base model of config.model.path (e.g. meta-llama/Llama-3.2-1B for Llama-3.2-1B-Instruct)")
        if checks.missing_file(settings.base_path):
            raise UserError(f"config.safelora.base_path = {settings.base_path!r}: no such directory")
        checks.one_of(config, "safelora.select", SELECT, "SafeLoRA selection")
        if isinstance(settings.threshold, bool) or not isinstance(settings.threshold, (int, float)):
            raise UserError(f"config.safelora.threshold = {settings.threshold!r}: must be a number (a cosine similarity)")
        checks.positive_int(config, "safelora.num_layers")

    @classmethod
    def preset(cls, config, preset) -> None:
        LoRA.preset(config, preset)
        config.safelora.enabled = True
        config.safelora.base_path = preset.base_model

    def init_state(self, run, state, model):
        """A base model that does not fit is refused now, not after training."""
        from dss.baselines import safelora

        if run.weights_on_disk:  # the check reads the weights' headers
            safelora.check_base(self.config.safelora, run.model_path, model.config, self.config.lora.targets)
        self.model_config = model.config
        return state

    def finalize(self, run, state, graphdef):
        """The adapters projected (before LoRA merges and writes them); per-module report in the workdir."""
        from dss import lora
        from dss.baselines import safelora

        adapter = lora.to_peft(self.model_config, state.trainable)
        tensors = safelora.project(self.config.safelora, run.model_path, adapter, run.workdir)
        state.trainable = lora.from_peft(self.model_config, tensors, state.trainable)
        return state
