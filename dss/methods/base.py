"""What a training method is: the hooks `dss.train` calls, each a no-op unless a method needs it.

A method is one class. An `Objective` is the loss, chosen by `config.objective.name`; a `Plugin`
changes the run around any objective and is switched on by `config.<name>.enabled`. The loop
calls every hook of every active method (the objective first, then the plugins in registry
order; `finalize` in reverse), so methods compose without knowing each other.

Class-level declarations (`check`, `defaults`, `preset`, labels) run on the config alone and
import no JAX: `python -m dss.train` refuses a bad config in seconds. The instance hooks run in
a training run; heavy modules are imported inside them.

Hooks, in the order the loop calls them:
  host   prepare_data(run, data) -> data      data selection or additions (SEAL, SafeInstr)
         datasets(run) -> {name: Data}        more data the run trains on (Lisa's alignment data)
         example_inputs(run, data, name)      per-example arrays batched with the rows (STAR weights)
         init_state(run, state, model)        what is trained, frozen, checkpointed (LoRA, Lisa)
         plan_step(step, state) -> StepPlan   per-step host decisions (Lisa's schedule)
  traced model_params(trainable, consts, key, kwargs) -> (params, kwargs)   the forward's weights (LoRA)
         value_and_grad(loss_fn, trainable, batch)                        the gradient (Vaccine)
         adjust(grads, trainable, inputs) -> (grads, penalty, metrics)    after accumulation (Lisa)
  host   finalize(run, state, graphdef) -> state                           before export (SafeLoRA, LoRA)
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar


@dataclasses.dataclass
class StepPlan:
    """A method's decisions for one step: where its batch comes from (None: the user data), the
    traced inputs its `adjust` hook gets, and host metrics to log."""

    batches: Any = None
    inputs: Any = None
    metrics: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Preset:
    """What a recipe (configs/paper, dss.mini) gives every method's `preset`: the alignment /
    safety data (source dicts) of the methods that use it, the unaligned base model of the policy,
    and where Vaccine's alignment stage exported its model."""

    alignment: tuple = ()
    base_model: str = ""
    vaccine_aligned: str = ""


class Method:
    """Base of every method; see the module docstring for the hooks."""

    name: ClassVar[str] = ""  # objective name, or config section of a plugin
    label: ClassVar[str] = ""  # the row name in the paper's tables (dss.tables, dss.mini)
    order: ClassVar[float] = 100.0  # row position in the paper's tables, lowest first
    tables: ClassVar[tuple[str, ...]] = ()  # the paper's tables it has a row in ("table1", "table2")

    # ------------------------------------------------------------------ declarations (no JAX)

    @classmethod
    def defaults(cls):
        """Its own config section (a ConfigDict, every field commented), or None."""
        return None

    @classmethod
    def check(cls, config) -> None:
        """Refuse a bad setting of its own keys by name (`dss.checks` has the helpers)."""

    @classmethod
    def check_shards(cls, config, shards: int) -> None:
        """Refuse batch sizes that `shards` devices (data x fsdp) do not divide."""

    @classmethod
    def preset(cls, config, preset: Preset) -> None:
        """Set what the method changes on top of a shared recipe (configs/paper/recipe.py, dss.mini)."""

    # ------------------------------------------------------------------ a run's hooks

    def __init__(self, config):
        self.config = config

    def prepare_data(self, run, data):
        return data

    def datasets(self, run) -> dict:
        return {}

    def example_inputs(self, run, data, name: str) -> dict:
        return {}

    def init_state(self, run, state, model):
        return state

    def plan_step(self, step: int, state) -> StepPlan | None:
        return None

    def meta(self) -> dict:
        """Host state that goes in every checkpoint's meta (data positions)."""
        return {}

    def restore(self, meta: dict) -> None:
        """Take back what `meta` saved."""

    def model_params(self, trainable, consts: dict, key, kwargs: dict):
        return trainable, kwargs

    # value_and_grad(self, loss_fn, trainable, batch) is looked up by the step: define it only
    # to replace jax.value_and_grad (at most one active method may)
    value_and_grad = None

    def adjust(self, grads, trainable, inputs):
        return grads, 0.0, {}

    def finalize(self, run, state, graphdef):
        return state


class Objective(Method):
    """The loss: per-token label log-probs (and the exact KL when the step ran the reference
    model) and this batch's per-example inputs -> (loss, metrics). Active when
    `config.objective.name == name`."""

    scores_star: ClassVar[bool] = False  # its inputs come from STAR (the guardrail settings matter)

    @classmethod
    def active(cls, config) -> bool:
        return config.objective.name == cls.name

    @classmethod
    def settings(cls) -> dict:
        """Its fields of the shared `config.objective` section, with their defaults."""
        return {}

    @classmethod
    def check_settings(cls, config) -> None:
        """Refuse a bad value of its `settings` fields, whichever objective is active (a typo in
        the shared section is caught even before it matters)."""

    def needs_ref_logp(self) -> bool:
        """log p_ref of every target, computed once per dataset before training (`ref_logp`)."""
        return False

    def needs_reference_model(self) -> bool:
        """The frozen starting model runs in the step (the exact KL)."""
        return False

    def loss(self, logp, full_kl, batch: dict, normalizer):
        raise NotImplementedError

    def init_state(self, run, state, model):
        if self.needs_reference_model():  # the starting model: under LoRA the frozen base itself, no copy
            state.reference = state.frozen if state.frozen is not None else state.copy_trainable()
        return state


class Plugin(Method):
    """A change around any objective, on with `config.<name>.enabled`."""

    stage: ClassVar[float] = 100.0  # when its hooks run among the plugins, lowest first (finalize: last first)

    @classmethod
    def active(cls, config) -> bool:
        return bool(config[cls.name].enabled) if cls.name in config else False


REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Add a method (a class decorator); another method of the same name is refused."""
    if not cls.name or not issubclass(cls, (Objective, Plugin)):
        raise TypeError(f"{cls!r}: a method is an Objective or Plugin subclass with a name")
    if REGISTRY.get(cls.name, cls) is not cls:
        raise ValueError(f"a method named {cls.name!r} is registered already ({REGISTRY[cls.name].__module__})")
    REGISTRY[cls.name] = cls
    return cls
