"""`python -m dss.landscape`: compute (or resume) a 1D/2D landscape, score it, plot it."""

from __future__ import annotations

import itertools
import json
import logging
import statistics
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

import dss.hub
import dss.models
from dss import distributed, sharding, templating
from dss import workdir as workdirs
from dss.errors import UserError
from dss.eval.benchmarks import advbench
from dss.eval.io import append_jsonl, read_done, read_jsonl, write_json
from dss.eval.policy import eos_ids
from dss.landscape.config import centre, check_section
from dss.landscape.directions import (Direction, Perturbation, cosine, interpolation_direction, load_direction,
                                      orthogonalize, random_direction, save_direction)
from dss.landscape.evaluator import SafetyEvaluator
from dss.landscape.plots import plot_1d, plot_2d
from dss.landscape.grid import grid_axes, visage

log = logging.getLogger("dss.landscape")


def _key(coeffs) -> str:
    return ",".join(f"{c:.9g}" for c in coeffs)


def _directions(cfg, model, workdir: Path, mesh) -> list[Direction]:
    specs = list(cfg.directions)  # checked by check_section
    direction_dir = Path(cfg.direction_dir or workdir / "directions")
    out = []
    for axis, spec in enumerate(specs):
        kind, _, arg = str(spec).partition(":")
        if kind == "random":
            seed = int(arg) if arg else int(cfg.seed) + axis
            path = direction_dir / f"random-seed{seed}.safetensors"
            if path.exists():
                d = load_direction(path, model, cfg.direction_dtype)
                log.info("direction %s loaded from %s", d.name, path)
            else:
                d = random_direction(model, seed, cfg.direction_dtype)
                d.meta["model"] = cfg.model
                if distributed.is_writer():
                    save_direction(d, path)
                log.info("direction %s saved to %s", d.name, path)
        else:  # interp:<checkpoint>
            target = dss.models.load_pretrained(workdirs.resolve_model(arg)[0], dtype=cfg.dtype, mesh=mesh)
            d = interpolation_direction(model, target, name=f"interp:{arg}")
            del target
        out.append(d)
    if cfg.orthogonalize and len(out) == 2:
        out[1] = orthogonalize(out[1], out[0])
    return out


def _settings(cfg, model_path: str, directions: list[Direction], prompts: list[str], template_vars: dict) -> dict:
    """What the points depend on (the grid is not: a finer or wider grid reuses the points it shares)."""
    settings = {
        "model": model_path, "tokenizer": cfg.tokenizer, "dtype": cfg.dtype,
        "directions": [{"name": d.name, "norm": d.norm()} for d in directions],
        "orthogonalize": bool(cfg.orthogonalize), "direction_dtype": cfg.direction_dtype,
        "prompts": prompts, "system_prompt": cfg.system_prompt, "max_new_tokens": cfg.max_new_tokens,
        "judge": cfg.judge, "keywords": list(cfg.keywords), "template_vars": template_vars,
    }
    if cfg.judge == "guardrail":
        settings["guardrail"] = cfg.guardrail.to_dict()
    return json.loads(json.dumps(settings))


def _judge(cfg, template_vars):
    if cfg.judge == "keyword":
        return None
    from dss.eval.guardrail_judge import GuardrailJudge

    return GuardrailJudge.from_section(cfg.guardrail, template_vars)


def _curve(source) -> tuple[str, tuple]:
    """(label, (alphas, asr, marks)) of a finished 1D landscape's results.json (or its directory)."""
    path = Path(source)
    path = path / "results.json" if path.is_dir() else path
    res = json.loads(path.read_text())
    if len(res["axes"]) != 1:
        raise UserError(f"{path}: a {len(res['axes'])}D landscape cannot be overlaid on a 1D plot")
    return res["label"], (res["axes"][0], res["asr"], _marks(res["directions"][0]))


def _marks(direction: dict) -> dict:
    """The target checkpoint of an interpolation axis, marked at a = 1."""
    name = direction["name"]
    return {1.0: Path(name.split(":", 1)[1].rstrip("/")).name} if name.startswith("interp:") else {}


def run(cfg, workdir, default_model: str = "", template_vars=None) -> dict:
    """Compute (or resume) the landscape a `landscape` config section describes; returns results.json's content.
    `template_vars` go to the prompts' chat template; None = those recorded in `workdir` (dss.templating)."""
    workdir, source = Path(workdir), str(cfg.model or default_model)
    if template_vars is None:
        template_vars = templating.recorded(workdir) or {}
    if not source:
        raise UserError("config.landscape.model (or model.path) is empty: no model to centre the landscape on")
    check_section(cfg)
    model_path, _ = workdirs.resolve_model(source)
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    cfg.model = model_path
    outdir = workdir / cfg.name
    write = distributed.is_writer()  # every host computes; process 0 writes
    if write:
        outdir.mkdir(parents=True, exist_ok=True)
    points_file, settings_file = outdir / "points.jsonl", outdir / "settings.json"

    from transformers import AutoTokenizer

    local = dss.hub.resolve_path(model_path)
    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or str(local))
    mesh = sharding.make_mesh(*cfg.mesh) if cfg.mesh else None
    model = dss.models.load_pretrained(local, dtype=cfg.dtype, mesh=mesh)
    directions = _directions(cfg, model, workdir, mesh)
    axes = grid_axes(cfg.grid_range, cfg.steps, len(directions))
    prompts = [r.prompt for r in advbench(cfg.advbench, limit=cfg.num_prompts)]

    settings = _settings(cfg, model_path, directions, prompts, template_vars)
    if settings_file.exists():
        stored = json.loads(settings_file.read_text())
        if stored != settings:
            changed = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
            raise UserError(f"{settings_file}: the points in {outdir} were made with other settings "
                             f"(differing: {changed}); use another landscape.name or --workdir")
    elif write:
        write_json(settings_file, settings)

    done = read_done(points_file, lambda p: _key(p["coeffs"]), write)
    grid = [tuple(float(c) for c in p) for p in itertools.product(*axes)]
    pending = [c for c in grid if _key(c) not in done]
    if pending:
        evaluator = SafetyEvaluator(tokenizer, prompts, cfg.max_new_tokens, eos_ids(tokenizer, local),
                                    cfg.system_prompt, cfg.batch_size, cfg.keywords, _judge(cfg, template_vars), mesh,
                                    template_vars)
        perturbation = Perturbation(model, directions)
        del model
        groups = [pending[first : first + cfg.points_per_batch] for first in range(0, len(pending), cfg.points_per_batch)]

        # several hosts, each with the model on its own device: host p evaluates groups p, p + P, ...
        shared = distributed.is_multihost() and mesh is None
        first_round = jax.process_count() if shared else 1  # groups that compile (one per host)

        def evaluate(group, index):
            began = time.perf_counter()
            results = evaluator([perturbation.model_at(c) for c in group])
            seconds = (time.perf_counter() - began) / len(group)
            first = {"compiling": True} if index < first_round else {}
            return [{"coeffs": list(coeffs), **point, "seconds": seconds, **first}
                    for coeffs, point in zip(group, results)]

        desc = cfg.name if "landscape" in cfg.name else f"landscape {cfg.name}"
        with tqdm(total=len(grid), initial=len(grid) - len(pending), desc=desc, unit="point") as bar:
            for points in distributed.round_robin(groups, evaluate, shared):
                for point in points:
                    if not cfg.save_responses:
                        point.pop("responses")
                    if write:
                        append_jsonl(points_file, [point])
                    done[_key(point["coeffs"])] = point
                    bar.set_postfix(asr=f"{point['asr']:.1f}")
                    bar.update()

    shape = tuple(len(a) for a in axes)
    asr = np.array([done[_key(c)]["asr"] for c in grid]).reshape(shape)
    asr_keyword = np.array([done[_key(c)]["asr_keyword"] for c in grid]).reshape(shape)
    points = [done[_key(c)] for c in grid]
    seconds = [p["seconds"] for p in points]
    warm = [p["seconds"] for p in points if not p.get("compiling")] or seconds
    first = [p["seconds"] for p in points if p.get("compiling")]
    results = {
        "label": cfg.label or Path(source.rstrip("/")).name,
        "model": model_path,
        "directions": [{"name": d.name, "kind": d.kind, "norm": d.norm(), **d.meta} for d in directions],
        "cosine": cosine(*directions) if len(directions) == 2 else None,
        "orthogonalized": bool(cfg.orthogonalize and len(directions) == 2),
        "judge": cfg.judge,
        "num_prompts": len(prompts),
        "max_new_tokens": cfg.max_new_tokens,
        "axes": [a.tolist() for a in axes],
        "asr": asr.tolist(),
        "asr_keyword": asr_keyword.tolist(),
        "visage": visage(asr, axes),
        "visage_all_points": visage(asr, axes, connected=False),
        # the first points each invocation evaluates include compilation: timed apart
        "seconds_per_point": {"median": statistics.median(warm), "max": max(seconds)},
        "first_point_seconds": max(first) if first else None,
    }
    if not write:
        return results
    write_json(outdir / "results.json", results)

    title = f"{results['label']}: VISAGE {results['visage']['score']:.1f}"
    if len(axes) == 1:
        curves = {results["label"]: (axes[0], asr, _marks(results["directions"][0]))}
        for other in cfg.compare:
            label, curve = _curve(other)
            curves[f"{label} ({Path(other).name})" if label in curves else label] = curve
        plot_1d(curves, outdir / "landscape_1d.png", title=title)
    else:
        plot_2d(axes[0], axes[1], asr, outdir / "landscape_2d_contour.png", outdir / "landscape_2d_surface.png",
                title=title)
    v = results["visage"]
    timing = f"{results['seconds_per_point']['median']:.2f} s per point"
    if first:
        timing = f"first point {max(first):.1f} s (compiling), then {timing}"
    log.info("%s: VISAGE %.2f (basin %d/%d points, width %s; all-points VISAGE %.2f), %s -> %s",
             results["label"], v["score"], v["basin_points"], v["grid_points"], v["width"],
             results["visage_all_points"]["score"], timing, outdir)
    return results


def main(config, workdir) -> dict:
    """`python -m dss.landscape` job: the config's `landscape` section. With landscape.model empty,
    the centre is the `--workdir` run's export when it has one, else config.model.path. The
    landscape's directory `<workdir>/<landscape.name>` is locked while the job writes it."""
    model = centre(config, workdir)
    distributed.initialize(config)
    log.info("landscape centre: %s", model)
    with workdirs.lock(Path(workdir) / config.landscape.name, "dss.landscape"):
        template_vars = templating.run_template_vars(config.get("template") or {}, workdir)
        return run(config.landscape, workdir, model, template_vars)
