"""Lisa (Huang et al., NeurIPS 2024): alignment steps (on alignment data) and user finetuning
steps alternate in one run, both with a proximal term to the weights at the last switch
(`dss.baselines.lisa` holds the schedule and the term, following the official trainer)."""

from __future__ import annotations

import ml_collections

from dss import checks
from dss.errors import UserError
from dss.methods.base import Plugin, StepPlan, register

ALIGNMENT = "alignment"  # the dataset name of the alignment data (its batcher's checkpoint key: alignment_data)
PAPER_STEPS = (1, 9)  # the official 1:9 split; the official 100/900 outlasts the paper's short runs


@register
class Lisa(Plugin):
    name, label, order, tables, stage = "lisa", "Lisa", 50, ("table2",), 60

    @classmethod
    def defaults(cls):
        section = ml_collections.ConfigDict()
        section.enabled = False  # alternate alignment and user finetuning steps in one run, with a proximal term
        section.sources = ()  # alignment data (harmful prompt -> refusal): source dicts as in data.sources; never attacked
        #   (a tuple, so the command line can give it: --config.lisa.sources='({"path": "align.jsonl"},)')
        section.alignment_steps = 100  # steps of each alignment state (official script: 100)
        section.finetune_steps = 900  # steps of each user finetuning state (official script: 900)
        section.rho = 1.0  # proximal coefficient: rho/2 ||w - w_anchor||^2, anchor = weights at the last switch (official: 1)
        section.proximal_after = 0.1  # share of the run's steps before the proximal term is on (official: 0.1)
        return section

    @classmethod
    def check(cls, config) -> None:
        checks.sources(config, "lisa.sources", "Lisa alternates user finetuning with steps on alignment data "
                       "(harmful prompt -> refusal)")
        checks.positive_int(config, "lisa.alignment_steps")
        checks.positive_int(config, "lisa.finetune_steps")
        checks.non_negative(config, "lisa.rho")
        checks.in_range(config, "lisa.proximal_after", 0, 1, "a share of the steps,")

    @classmethod
    def preset(cls, config, preset) -> None:
        config.lisa.enabled = True
        config.lisa.sources = tuple(preset.alignment)
        config.lisa.alignment_steps, config.lisa.finetune_steps = PAPER_STEPS

    def datasets(self, run) -> dict:
        data = run.encode(self.config.lisa.sources, "Lisa's alignment data")
        if len(data) < self.config.train.global_batch:
            raise UserError(f"{len(data)} usable alignment examples in config.lisa.sources, fewer than "
                            f"config.train.global_batch={self.config.train.global_batch}")
        return {ALIGNMENT: data}

    def init_state(self, run, state, model):
        self.horizon = run.horizon
        state.extra["anchor"] = state.copy_trainable()  # the first anchor: the starting weights
        return state

    def plan_step(self, step, state):
        """The state of 0-based `step`: at a switch the current weights become the anchor."""
        import jax.numpy as jnp

        from dss.baselines import lisa

        settings = self.config.lisa
        if lisa.switches_at(step, settings.alignment_steps, settings.finetune_steps):
            state.extra["anchor"] = state.copy_trainable()
        aligning = lisa.state_at(step, settings.alignment_steps, settings.finetune_steps) == lisa.ALIGNMENT
        coef = jnp.float32(lisa.proximal_coef(step, settings.rho, settings.proximal_after, self.horizon))
        return StepPlan(batches=ALIGNMENT if aligning else None, inputs=(state.extra["anchor"], coef),
                        metrics={"alignment_state": float(aligning)})

    def adjust(self, grads, trainable, inputs):
        from dss.baselines import lisa

        grads, proximal = lisa.add_proximal(grads, trainable, *inputs)
        return grads, proximal, {"proximal": proximal}
