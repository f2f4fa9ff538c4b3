"""SEAL (Shen et al., ICLR 2025): rank the user data with a selector trained by bilevel
optimisation against safe data, then finetune on the top share (`dss.baselines.seal`)."""

from __future__ import annotations

import ml_collections

from dss import checks
from dss.errors import UserError
from dss.methods.base import Plugin, register

ACTIVATIONS = ("softmax", "sigmoid")
PAPER_GLOBAL_BATCH = 32  # 64 (the default) gives one selector step per epoch on the paper's 100 harmful rows


@register
class SEAL(Plugin):
    name, label, order, tables, stage = "seal", "SEAL", 40, ("table2",), 40

    @classmethod
    def defaults(cls):
        section = ml_collections.ConfigDict()
        section.enabled = False  # rank the user data with a selector trained first (cached in the workdir), keep the top
        section.safe_sources = ()  # upper-level safe/aligned data: source dicts as in data.sources (required when enabled);
        #   a tuple, so the command line can set it: --config.seal.safe_sources='({"path": "safe.jsonl"},)'
        section.keep_fraction = 0.8  # share of user examples kept, highest selector scores first (official --topp)
        section.epochs = 3  # selector training passes (each min(safe, user) // global_batch steps)
        section.max_steps = -1  # cap on selector steps (-1 = epochs decide)
        section.global_batch = 64  # safe examples and user examples per selector step (as many of each)
        section.micro_batch = 8  # examples of each per forward/backward; global_batch / micro_batch accumulated
        section.lr = 1e-5  # constant Adam rate of the model trained alongside the selector
        section.selector_lr = 5e-3  # constant Adam rate of the selector logits
        section.upper_weight = 1.0  # lambda in epoch 0: model loss = lambda * safe CE + (1 - lambda) * weighted user CE
        section.upper_weight_decay = 0.03  # lambda falls by this each epoch
        section.activation = "softmax"  # selector weights: softmax (N * softmax(logits)) | sigmoid (2 * sigmoid(logits))
        return section

    @classmethod
    def check(cls, config) -> None:
        checks.sources(config, "seal.safe_sources", "SEAL trains its data selector against safe/aligned data",
                       " (e.g. the bundled refusals, dss.data.bundled('safety_refusals/harmbench_refusals.jsonl'))")
        checks.in_range(config, "seal.keep_fraction", 0, 1, "the share of user examples kept,", low_open=True)
        checks.one_of(config, "seal.activation", ACTIVATIONS, "selector activation")
        epochs = checks.positive_int(config, "seal.epochs")
        checks.divides(config, "seal.global_batch", "seal.micro_batch")
        checks.steps_or_all(config, "seal.max_steps")
        for key in ("seal.lr", "seal.selector_lr"):
            checks.positive_number(config, key, "learning rate")
        weight = checks.in_range(config, "seal.upper_weight", 0, 1, "the weight of the safe loss,", low_open=True)
        decay = config.seal.upper_weight_decay
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not (decay >= 0 and decay * (epochs - 1) <= weight):
            raise UserError(f"config.seal.upper_weight_decay = {decay!r}: must be >= 0 and keep the safe-loss weight "
                            f"config.seal.upper_weight - epoch * decay >= 0 through all {epochs} epochs")

    @classmethod
    def check_shards(cls, config, shards: int) -> None:
        if config.seal.global_batch % shards:
            raise UserError(f"config.seal.global_batch = {config.seal.global_batch}: the batch is split over {shards} "
                            f"devices (config.mesh data x fsdp); use a multiple of {shards}")

    @classmethod
    def preset(cls, config, preset) -> None:
        config.seal.enabled = True
        config.seal.safe_sources = tuple(preset.alignment)
        config.seal.global_batch = PAPER_GLOBAL_BATCH

    def prepare_data(self, run, data):
        from dss.baselines import seal
        from dss.run import Data

        return Data(*seal.select(run.config, run.workdir, run.tokenizer, run.template_vars, data.encoded,
                                 data.examples, data.stats))
