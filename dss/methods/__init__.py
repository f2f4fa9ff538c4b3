"""Every training method, one module each, and the registry that finds them.

The objective (SFT, RS, STAR-DSS, Deep Token, KL-only) is chosen by `config.objective.name`; the
plugins (SafeInstr, SEAL, Lisa, Vaccine, LoRA, SafeLoRA) compose with any objective, each on with
`config.<name>.enabled`. The built-ins are the modules of this package, found by name, so adding
a method is adding one file; a method defined elsewhere calls `register` before the config is
read. Labels, recipe presets and the paper's row order come from here, once. Importing this
package loads no JAX (see `dss.methods.base`).
"""

from __future__ import annotations

import importlib
import pkgutil

from dss.errors import UserError
from dss.methods.base import REGISTRY, Method, Objective, Plugin, Preset, StepPlan, register

__all__ = ["Method", "Objective", "Plugin", "Preset", "StepPlan", "active", "build", "by_name", "configure", "label",
           "objectives", "plugins", "register", "table_rows"]

# objective names that became plugins: refused with the keys to use instead
RENAMED = {"vaccine": "vaccine.enabled=True (with objective.name=sft for Vaccine's alignment stage)",
           "lisa": "lisa.enabled=True (with objective.name=sft, Lisa's setting)"}


def _load_builtins() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


def _by_row(classes) -> list[type[Method]]:
    return sorted(classes, key=lambda c: (c.order, c.name))


def objectives() -> list[type[Objective]]:
    return _by_row(c for c in REGISTRY.values() if issubclass(c, Objective))


def plugins() -> list[type[Plugin]]:
    """Plugins in the order their hooks run."""
    return sorted((c for c in REGISTRY.values() if issubclass(c, Plugin)), key=lambda c: (c.stage, c.name))


def by_name(name: str) -> type[Method]:
    if name not in REGISTRY:
        raise UserError(f"unknown method {name!r}; registered: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def objective_class(config) -> type[Objective]:
    name = config.objective.name
    if name in RENAMED:
        raise UserError(f"config.objective.name = {name!r}: {name} is a plugin now, composable with any objective; "
                        f"set config.{RENAMED[name]}")
    names = [c.name for c in objectives()]
    if name not in names:
        raise UserError(f"config.objective.name = {name!r}: unknown objective; use one of {', '.join(names)}")
    return REGISTRY[name]


def active(config) -> list[type[Method]]:
    """The objective of `config`, then every enabled plugin, in hook order."""
    return [objective_class(config), *(p for p in plugins() if p.active(config))]


def build(config) -> list[Method]:
    """The active methods of `config` as a run's instances, the objective first."""
    return [cls(config) for cls in active(config)]


def configure(config, name: str, preset: Preset) -> None:
    """Set method `name` on a shared recipe (configs/paper/recipe.py, dss.mini): an objective by
    its name; a plugin on SFT, with what its `preset` sets (the LoRA rate, the alignment data, ...)."""
    cls = by_name(name)
    config.objective.name = name if issubclass(cls, Objective) else "sft"
    cls.preset(config, preset)


def label(name: str) -> str:
    """The paper's row name of a method (or the name itself, for what is not a method)."""
    return REGISTRY[name].label if name in REGISTRY else name


def table_rows(table: str) -> tuple[str, ...]:
    """The row labels of one of the paper's tables, in its order."""
    return tuple(c.label for c in _by_row(REGISTRY.values()) if table in c.tables)


_load_builtins()
