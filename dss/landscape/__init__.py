"""VISAGE safety landscapes (Peng et al., "Navigating the Safety Landscape", NeurIPS 2024).

    python -m dss.landscape --config configs/<x>.py [--config.landscape.directions='("random","random")']

A landscape evaluates keyword-refusal attack success (ASR) of the model theta + a*d1 (+ b*d2) on a
grid of (a, b) and summarises it with the VISAGE score.

Modules: `directions` (random and interpolation directions, saved and loaded; the perturbed
models theta + a*d1 + b*d2), `visage` (the grid and the VISAGE score), `evaluator` (greedy
responses judged for attack success), `plots`, and `job` (the resumable job that ties them).
"""

from dss.landscape.directions import (Direction, Perturbation, cosine, interpolation_direction, load_direction,
                                      norm_gain_names, orthogonalize, random_direction, save_direction, weights)
from dss.landscape.evaluator import SafetyEvaluator
from dss.landscape.job import landscape_defaults, main, run
from dss.landscape.plots import plot_1d, plot_2d
from dss.landscape.visage import MAX_ASR, grid_axes, visage

__all__ = [
    "MAX_ASR", "Direction", "Perturbation", "SafetyEvaluator", "cosine", "grid_axes", "interpolation_direction",
    "landscape_defaults", "load_direction", "main", "norm_gain_names", "orthogonalize", "plot_1d", "plot_2d",
    "random_direction", "run", "save_direction", "visage", "weights",
]
