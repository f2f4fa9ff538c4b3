"""How many XLA programs a block of code compiles, and the seconds it spends on them.

A jitted function compiles one program per distinct input shape, so a job whose shapes follow
its data compiles without end; counting what a run compiled shows whether its shapes are
bounded. JAX reports every compilation through `jax.monitoring` (tracing, lowering, then the
backend compile or its load from the persistent compilation cache); `counting` keeps those of
the jitted functions it is given.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
from collections.abc import Iterable, Iterator

import jax

__all__ = ["Compiled", "counting"]

_BACKEND = "/jax/core/compile/backend_compile_duration"  # once per program, compiled or loaded from disk
_STAGES = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration", _BACKEND)


@dataclasses.dataclass
class Compiled:
    """What `counting` saw: programs per function name, and the seconds tracing, lowering and compiling them."""

    programs: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    seconds: float = 0.0

    @property
    def count(self) -> int:
        return sum(self.programs.values())


@contextlib.contextmanager
def counting(functions: Iterable) -> Iterator[Compiled]:
    """The programs `functions` (jitted) compile while the block runs."""
    names = {f.__name__ for f in functions}
    seen = Compiled()

    def listen(event: str, seconds: float, fun_name: str = "", **_):
        name = fun_name.removeprefix("jit(").removesuffix(")")  # tracing names the function, later stages jit(f)
        if event in _STAGES and name in names:
            seen.seconds += seconds
            if event == _BACKEND:
                seen.programs[name] += 1

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
