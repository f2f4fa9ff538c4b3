"""`python -m dss.mini --outdir DIR [--quick] [--seeds N] [--workers W]`

Builds (or reuses) the miniature world, scores each scenario's data with STAR, finetunes the
initial policy with every method on every scenario and seed, evaluates each model, and writes
DIR/results.json, DIR/table.md, DIR/safety_vs_capability.png, DIR/star_plots/ and DIR/summary.json
(per-seed values, the world's guardrail accuracies and refusal rates, Vaccine's alignment stages,
and timings).
`--quick`: a smaller world, the harmful scenario only, one seed (the CI test).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dss.mini import baselines, pool, report, scenarios, world

QUICK_SCENARIOS = ("harmful",)
PLOTTED = 4  # STAR trajectory plots of the first examples of the plotted scenario


def say(message: str) -> None:
    print(message, flush=True)


def run(outdir: Path, quick: bool = False, seeds: int | None = None, workers: int = 2, progress=say) -> dict:
    start = time.time()
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    s = world.QUICK if quick else world.Settings()
    seeds = seeds or (1 if quick else 3)
    names = QUICK_SCENARIOS if quick else scenarios.SCENARIOS
    recipe = scenarios.Recipe()
    world_dir = world.build_world(s, workers, progress)
    world_seconds = time.time() - start
    marker = outdir / "world.txt"  # runs of another world cannot be mixed in (dss.eval refuses them too)
    if marker.exists() and marker.read_text().strip() != str(world_dir):
        raise ValueError(f"{outdir} holds runs of the world {marker.read_text().strip()}, not {world_dir}; "
                         "use a new --outdir")
    marker.write_text(f"{world_dir}\n")
    files = scenarios.write_data(world_dir, s, outdir / "data")

    star_start, star_summary = time.time(), {}
    plotted = "adaptation" if "adaptation" in names else names[0]
    for name in names:
        progress(f"STAR: scoring the {name} data with the STAR guardrail")
        star_dir = outdir / "star" / name
        config = scenarios.finetune_config(name, "star_dss", 0, world_dir, files, star_dir / "star.npz", recipe, s)
        examples, trajs = scenarios.star_trajectories(config, star_dir)
        unsafe = sum(t.safe_prob[-1] < 0.5 for t in trajs)  # the whole-response verdicts RS goes by
        star_summary[name] = {"examples": len(trajs), "full_response_unsafe_pct": 100.0 * unsafe / len(trajs),
                              "first_chunk_mean_p_safe": float(sum(t.safe_prob[0] for t in trajs) / len(trajs))}
        if name == plotted:
            from dss.star import plot_trajectory

            (outdir / "star_plots").mkdir(exist_ok=True)
            for i in range(min(PLOTTED, len(trajs))):
                plot_trajectory(examples[i], trajs[i], outdir / "star_plots" / f"{name}_{i}.png")
    star_seconds = time.time() - star_start

    runs = outdir / "runs"
    job = lambda name, method, seed, workdir: scenarios.Job(name, method, seed, world_dir, files,
                                                          outdir / "star" / (name if name in names else names[0])
                                                          / "star.npz", workdir, recipe, s, runs)
    aligns = [job(scenarios.ALIGNMENT, "vaccine", seed, baselines.vaccine_align_dir(runs, seed))
              for seed in range(seeds)]
    finetunes = [[job(name, method, seed, runs / name / f"{method}_s{seed}") for name in names
                  for method in scenarios.METHODS] for seed in range(seeds)]
    batches = job_batches(job("initial", "initial", 0, runs / "initial"), aligns, finetunes)
    jobs = [j for batch in batches for j in batch]
    progress(f"{seeds} Vaccine alignment stage(s) + {seeds * len(finetunes[0])} finetuning runs, "
             f"{len(jobs)} evaluations, on {workers} worker(s)")
    runs_start, env, done = time.time(), pool.compilation_cache(world.cache_root()), []
    for batch in batches:
        done += pool.run_jobs(scenarios.run_job, batch, [j.workdir / "log.txt" for j in batch], workers, env, progress)
    runs_seconds = time.time() - runs_start

    initial = [metrics for j, metrics in zip(jobs, done) if j.scenario == "initial"]
    vaccine_alignment = [metrics for j, metrics in zip(jobs, done) if j.scenario == scenarios.ALIGNMENT]
    per_seed = {name: {"initial": initial, **{method: [] for method in scenarios.METHODS}} for name in names}
    for j, metrics in zip(jobs, done):
        if j.scenario in per_seed:
            per_seed[j.scenario][j.method].append(metrics)  # jobs are in seed order
    seconds = {"world": round(world_seconds, 1), "star": round(star_seconds, 1), "runs": round(runs_seconds, 1),
               "total": round(time.time() - start, 1)}
    extra = {"world": world.load_world(world_dir), "world_dir": str(world_dir), "star": star_summary,
             "vaccine_alignment": vaccine_alignment, "quick": quick,
             "seeds": seeds, "workers": workers, "seconds": seconds}
    results = report.write(outdir, per_seed, extra)
    progress((outdir / "table.md").read_text())
    progress(f"seconds: {json.dumps(seconds)}")
    return results


def job_batches(initial, aligns: list, finetunes: list[list]) -> list[list]:
    """One batch of jobs per seed, so the seeds finish in order: seed s's Vaccine alignment stage
    (first: the longest job) and its runs; its Vaccine runs, which finetune the stage's export, go
    into the next batch (a last one after the last seed)."""
    batches, waiting = [], [initial]
    for align, runs in zip(aligns, finetunes):
        batches.append([align, *waiting, *(j for j in runs if j.method != "vaccine")])
        waiting = [j for j in runs if j.method == "vaccine"]
    return batches + [waiting]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dss.mini", description=__doc__.split("\n\n")[1])
    parser.add_argument("--outdir", required=True, type=Path)
    parser.add_argument("--quick", action="store_true", help="smaller world, harmful scenario, one seed")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per method (default 3; --quick: 1)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (one CPU thread each)")
    args = parser.parse_args(argv)
    run(args.outdir, args.quick, args.seeds, args.workers)


if __name__ == "__main__":
    main()
