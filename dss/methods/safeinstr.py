"""SafeInstr (Bianchi et al., ICLR 2024): safety demonstrations (harmful request -> refusal)
appended to the user's finetuning data (`dss.baselines.safeinstr`, docs/baselines.md)."""

from __future__ import annotations

import ml_collections

from dss import checks
from dss.errors import UserError
from dss.methods.base import Plugin, register


@register
class SafeInstr(Plugin):
    name, label, order, tables, stage = "safeinstr", "SafeInstr", 30, ("table2",), 50

    @classmethod
    def defaults(cls):
        section = ml_collections.ConfigDict()
        section.enabled = False  # add safety rows (harmful request -> refusal) to the data, after mixing and attacks
        section.path = ""  # safety set (file or hub id); "" = the bundled HarmBench refusals (dss/data/files/safety_refusals)
        section.prompt_field = "prompt"  # its request field (the official safety_only_data_Instructions.json: "instruction")
        section.response_field = "response"  # its refusal field (the official file: "output")
        section.count = 0  # safety rows added, drawn without replacement with data.seed; 0 = every row
        return section

    @classmethod
    def check(cls, config) -> None:
        settings = config.safeinstr
        if settings.path and checks.missing_file(settings.path):
            raise UserError(f"config.safeinstr.path = {settings.path!r}: no such file (the safety set SafeInstr adds to the "
                            "data; '' = the bundled HarmBench refusals)")
        for key in ("safeinstr.prompt_field", "safeinstr.response_field"):
            if not isinstance(checks.value(config, key), str) or not checks.value(config, key):
                raise UserError(f"config.{key} = {checks.value(config, key)!r}: must name a field of the safety set")
        count = settings.count
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise UserError(f"config.safeinstr.count = {count!r}: must be an integer >= 0 (0 = every row)")

    @classmethod
    def preset(cls, config, preset) -> None:
        config.safeinstr.enabled = True
        config.safeinstr.path = preset.alignment[0]["path"]

    def prepare_data(self, run, data):
        from dss.baselines import safeinstr
        from dss.run import Data

        return Data(*safeinstr.add_safety_data(run.config, run.tokenizer, run.template_vars, data.encoded,
                                               data.examples, data.stats))
