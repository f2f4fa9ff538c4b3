"""LoRA (Hu et al. 2021): only low-rank adapters beside the frozen policy are trained and
checkpointed; the export merges them (and writes the adapter alone in PEFT layout). The library
is `dss.lora`."""

from __future__ import annotations

import ml_collections

from dss import checks
from dss.errors import UserError
from dss.methods.base import Plugin, register

TARGETS = ("q", "k", "v", "o", "gate", "up", "down")  # dss.models.transformer.LORA_TARGETS (tested equal)
LR_FACTOR = 20  # a LoRA rate: the paper's full-finetuning 5e-6 barely moves adapters; LoRA's usual 1e-4 is 20x


@register
class LoRA(Plugin):
    name, label, order, stage = "lora", "LoRA", 15, 10

    @classmethod
    def defaults(cls):
        section = ml_collections.ConfigDict()
        section.enabled = False  # train only adapters (and their optimizer state); every objective works, the KL reference is the base
        section.rank = 8  # r: the adapters' inner dimension (a: in x r, b: r x out)
        section.alpha = 16.0  # the update alpha / r * a @ b is added to each adapted weight (PEFT's lora_alpha)
        section.dropout = 0.05  # dropout on each adapter's input while training (PEFT's lora_dropout; 0 = off)
        section.targets = ("q", "v")  # adapted weights among q, k, v, o (attention) and gate, up, down (MLP)
        section.adapter_dir = ""  # the adapter alone in PEFT layout, written with the export; "" = <workdir>/adapter
        return section

    @classmethod
    def check(cls, config) -> None:
        settings = config.lora
        checks.positive_int(config, "lora.rank")
        checks.positive_number(config, "lora.alpha", "number (the update is scaled by alpha / rank)")
        checks.in_range(config, "lora.dropout", 0, 1, "a rate", high_open=True)
        if isinstance(settings.targets, str):
            raise UserError(f"config.lora.targets = {settings.targets!r}: a tuple of module names, e.g. ('q', 'v')")
        targets = tuple(settings.targets)
        if not targets:
            raise UserError(f"config.lora.targets = {settings.targets!r}: no module to adapt; name one or more of "
                            f"{', '.join(TARGETS)}")
        for target in targets:
            if target not in TARGETS:
                raise UserError(f"config.lora.targets = {settings.targets!r}: {target!r} matches no module; use names "
                                f"among {', '.join(TARGETS)}")
        if len(set(targets)) != len(targets):
            raise UserError(f"config.lora.targets = {settings.targets!r}: a module is named twice")

    @classmethod
    def preset(cls, config, preset) -> None:
        """LoRA on, at `LR_FACTOR` times the recipe's full-finetuning rate (set before this is called)."""
        config.lora.enabled = True
        config.train.lr, config.train.min_lr = config.train.lr * LR_FACTOR, config.train.min_lr * LR_FACTOR

    def init_state(self, run, state, model):
        """The model's parameters become the frozen base; fresh adapters are what is trained."""
        from dss import lora

        state.frozen, state.trainable = state.trainable, lora.init(self.config.lora, model, self.config.seed, run.mesh)
        state.trainable_name = "adapters"
        self.model_config = model.config
        return state

    def model_params(self, trainable, consts, key, kwargs):
        from dss import lora

        return consts["frozen"], {**kwargs, "lora": lora.apply(self.config.lora, trainable, key)}

    def finalize(self, run, state, graphdef):
        """The adapter alone in PEFT layout (process 0), then the merged model as what is exported."""
        from flax import nnx

        from dss import distributed, lora

        settings = self.config.lora
        if distributed.is_writer():
            lora.save_peft(lora.to_peft(self.model_config, state.trainable), settings, self.model_config,
                           self.config.model.path, settings.adapter_dir or run.workdir / "adapter")
        merged = lora.merged(nnx.merge(graphdef, state.frozen), settings, state.trainable)
        state.trainable, state.frozen, state.trainable_name = nnx.state(merged), None, "params"
        return state
