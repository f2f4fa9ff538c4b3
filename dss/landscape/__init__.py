"""VISAGE safety landscapes (Peng et al., "Navigating the Safety Landscape", NeurIPS 2024).

    python -m dss.landscape --config configs/<x>.py [--config.landscape.directions='("random","random")']

A landscape evaluates keyword-refusal attack success (ASR) of the model theta + a*d1 (+ b*d2) on a
grid of (a, b) and summarises it with the VISAGE score.

Modules: `config` (the config section), `directions` (random and interpolation directions, saved
and loaded; the perturbed models theta + a*d1 + b*d2), `grid` (the grid and the VISAGE score),
`evaluator` (greedy responses judged for attack success), `plots`, and `job` (the resumable job
that ties them). The names below are imported on first use, so `dss.landscape.config` (read by
every config) loads no JAX.
"""

import importlib

_HOME = {
    "landscape_defaults": "config",
    **dict.fromkeys(("Direction", "Perturbation", "cosine", "interpolation_direction", "load_direction",
                     "norm_gain_names", "orthogonalize", "random_direction", "save_direction", "weights"),
                    "directions"),
    "SafetyEvaluator": "evaluator",
    "main": "job", "run": "job",
    "plot_1d": "plots", "plot_2d": "plots",
    "MAX_ASR": "grid", "grid_axes": "grid", "visage": "grid",
}

__all__ = sorted(_HOME)


_SUBMODULES = ("config", "directions", "evaluator", "grid", "job", "plots")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"dss.landscape.{name}")
    if name not in _HOME:
        raise AttributeError(f"module 'dss.landscape' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"dss.landscape.{_HOME[name]}"), name)
    globals()[name] = value
    return value
