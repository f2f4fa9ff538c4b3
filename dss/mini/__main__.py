"""`python -m dss.mini --outdir DIR [--quick] [--seeds N] [--workers W]`

Builds (or reuses) the miniature world and its criteria, scores each scenario's data with STAR,
finetunes the initial policy with every row's method on every seed, evaluates each model, and
writes DIR/world.json (copied before any method runs), DIR/results.json, DIR/predictions.json,
DIR/table.md, DIR/safety_vs_capability.png, DIR/star_trajectory.png, DIR/star_plots/ and
DIR/summary.json (per-seed values, data statistics, CPU seconds accumulated over invocations).
`--quick`: a pipeline smoke run (a world too small to meet its criteria, the suffix scenario with
SFT, RS, STAR-DSS and RS on the robust guardrail, one seed; the suite's end-to-end test).
"""

from __future__ import annotations

if __name__ == "__main__":  # refuse bad flags in seconds, before the imports below load JAX
    from dss import cli
    from dss.mini.options import OPTIONS, check

    cli.launch("dss.mini.__main__", check=check, config=False, options=OPTIONS)

import json
import shutil
import time
from pathlib import Path

from dss.mini import baselines, cpu, pool, report, scenarios, world

PLOTTED = 4  # STAR trajectory plots of the first examples of the suffix scenario


def say(message: str) -> None:
    print(message, flush=True)


def steps_detail(directory: Path, pattern: str):
    """A callable giving "N steps trained" over the runs under `directory` (progress lines)."""
    def detail() -> str:
        steps = sum(len(p.read_text().splitlines()) for p in directory.glob(pattern) if p.exists())
        return f"{steps} training steps logged so far"
    return detail


def star_files(outdir: Path, world_dir: Path, files: dict, recipe, s, rows: dict, progress) -> dict:
    """Every STAR file the rows read (scenario x guardrail x chunk size), scored once here; plus
    the clean harmful data's (the trajectory figure). Returns per-file summaries."""
    keys = {}
    for scenario, methods in {**rows, "harmful": ("star_dss",)}.items():
        for method in methods:
            if baselines.scores_star(method):
                keys.setdefault(scenarios.star_key(scenario, method, recipe), (scenario, method))
    star_dir, summary, trajectories = outdir / "star", {}, {}
    for key, (scenario, method) in keys.items():
        progress(f"STAR: {key} ({len(summary) + 1}/{len(keys)})")
        config = scenarios.finetune_config(scenario, method, 0, world_dir, files, star_dir, recipe, s)
        examples, trajs = scenarios.star_trajectories(config, star_dir / key)
        trajectories[key] = (examples, trajs)
        unsafe = sum(t.safe_prob[-1] < 0.5 for t in trajs)  # the whole-response verdicts RS goes by
        summary[key] = {"examples": len(trajs), "whole_response_unsafe_pct": 100.0 * unsafe / len(trajs),
                        "mean_min_p_safe": float(sum(min(t.safe_prob) for t in trajs) / len(trajs))}
    return summary, trajectories


def figures(outdir: Path, trajectories: dict, recipe) -> None:
    from dss.star import plot_trajectory

    c = recipe.chunk_size
    curves = {}
    for key, label in ((f"harmful_star_c{c}", "clean, STAR guardrail"),
                       (f"suffix_star_c{c}", "sfx1-wrapped, STAR guardrail (susceptible)"),
                       (f"suffix_robust_c{c}", "sfx1-wrapped, robust guardrail")):
        if key in trajectories:
            examples, trajs = trajectories[key]
            curves[label] = report.mean_trajectory(trajs, [e["response"] for e in examples])
    key = f"suffix_star_c{c}"
    examples, trajs = trajectories[key]
    suffix = scenarios.texts.ATTACKS["sfx1"][1]
    start = sum((len(e["response"]) - len(suffix)) / len(e["response"]) for e in examples) / len(examples)
    report.trajectory_figure(curves, start, outdir / "star_trajectory.png")
    (outdir / "star_plots").mkdir(exist_ok=True)
    for i in range(min(PLOTTED, len(trajs))):
        plot_trajectory(examples[i], trajs[i], outdir / "star_plots" / f"suffix_{i}.png")


def testable_scenarios(criteria: dict, rows: dict) -> dict[str, bool]:
    """A scenario is testable when every world criterion of its wrapper (none for harmful and
    benign), of clean compliances, of refusals and benign answers, of the judge and of the policy held."""
    out = {}
    for scenario in rows:
        kind = scenarios.ATTACK.get(scenario, "clean")
        relevant = [c for name, c in criteria.items()
                    if ":" not in name or name.split(":")[1] in (kind, "clean", "refusal", "benign")]
        out[scenario] = all(c["held"] for c in relevant)
    return out


def run(outdir: Path, quick: bool = False, seeds: int | None = None, workers: int = 2, progress=say) -> dict:
    start, cpu_start = time.time(), cpu.seconds()
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    s = world.QUICK if quick else world.Settings()
    seeds = seeds or (1 if quick else 3)
    rows = scenarios.QUICK_ROWS if quick else scenarios.ROWS
    recipe = scenarios.Recipe()
    world_dir = world.build_world(s, workers, progress)
    world_info = world.load_world(world_dir)
    marker = outdir / "world.json"  # the world's criteria, as measured before any method ran
    if marker.exists() and json.loads(marker.read_text())["key"] != world_info["key"]:
        raise ValueError(f"{outdir} holds runs of another world ({marker}); use a new --outdir")
    shutil.copyfile(world_dir / "world.json", marker)
    testable = testable_scenarios(world_info["criteria"], rows)
    progress(f"world {world_dir} ({world_info['version']}): testable scenarios {testable}")
    world_cpu = cpu.seconds() - cpu_start
    files = scenarios.write_data(world_dir, s, outdir / "data", recipe)

    star_cpu = cpu.seconds()
    star_summary, trajectories = star_files(outdir, world_dir, files, recipe, s, rows, progress)
    figures(outdir, trajectories, recipe)
    star_cpu = cpu.seconds() - star_cpu

    runs = outdir / "runs"
    job = lambda name, method, seed, workdir: scenarios.Job(name, method, seed, world_dir, files, outdir / "star",
                                                          workdir, recipe, s, runs)
    vaccine = any("vaccine" in methods for methods in rows.values())
    aligns = [job(scenarios.ALIGNMENT, "vaccine", seed, baselines.vaccine_align_dir(runs, seed))
              for seed in range(seeds)] if vaccine else [None] * seeds
    finetunes = [[job(name, method, seed, runs / name / f"{method}_s{seed}") for name, methods in rows.items()
                  for method in methods] for seed in range(seeds)]
    batches = job_batches(job("initial", "initial", 0, runs / "initial"), aligns, finetunes, scenarios.PREDICTION_ROWS,
                          scenarios.LAST_ROWS)
    total = sum(map(len, batches))
    progress(f"{total} jobs (finetune + evaluate) over {seeds} seed(s), on {workers} worker(s)")
    env, done = pool.compilation_cache(world.cache_root()), []
    seconds = {"world_cpu_s": round(world_cpu, 1), "star_cpu_s": round(star_cpu, 1)}
    earlier = previous_invocations(outdir / "summary.json")
    runs_start = cpu.seconds()

    def write(runs_cpu: float) -> dict:
        this = {**seconds, "runs_cpu_s": round(runs_cpu, 1), "total_cpu_s": round(world_cpu + star_cpu + runs_cpu, 1),
                "wall_s": round(time.time() - start, 1), "jobs": len(done)}
        return write_outputs(outdir, rows, done, earlier + [this], world_info, world_dir, testable, star_summary,
                             quick, seeds, workers)

    def after_batch(k: int, results: list) -> None:  # a stopped run keeps every batch it finished
        done.extend(zip(batches[k], results))
        progress(f"batch {k + 1}/{len(batches)} done")
        # workers are reaped only when the pool closes: until then, count their jobs' own seconds
        write(cpu.seconds() - runs_start + sum(m["cpu_seconds"] for _, m in done))

    pool.run_batches(scenarios.run_job, batches, [[j.workdir / "log.txt" for j in b] for b in batches], workers, env,
                     progress, steps_detail(runs, "*/*/metrics.jsonl"), after_batch)
    results = write(cpu.seconds() - runs_start)  # the pool is closed: its workers' seconds are all counted
    progress((outdir / "table.md").read_text())
    progress(f"CPU seconds: {json.dumps(json.loads((outdir / 'summary.json').read_text())['cpu_seconds']['total'])}")
    return results


def write_outputs(outdir: Path, rows: dict, done: list, invocations: list[dict], world_info: dict, world_dir: Path,
                  testable: dict, star_summary: dict, quick: bool, seeds: int, workers: int) -> dict:
    """results.json, table.md, the figures and summary.json from the jobs done so far."""
    initial = [m for j, m in done if j.scenario == "initial"]
    per_seed = {name: {"initial": initial, **{method: [] for method in methods}} for name, methods in rows.items()}
    for j, m in sorted(done, key=lambda jm: jm[0].seed):
        if j.scenario in per_seed:
            per_seed[j.scenario][j.method].append(m)
    totals = {k: round(sum(i.get(k, 0) for i in invocations), 1)
              for k in ("world_cpu_s", "star_cpu_s", "runs_cpu_s", "total_cpu_s", "wall_s")}
    totals["world_build_cpu_s"] = world_info["cpu_seconds"]  # the world's own build, whenever it ran
    totals["full_cpu_s_with_world_build"] = round(totals["star_cpu_s"] + totals["runs_cpu_s"]
                                                  + world_info["cpu_seconds"], 1)
    extra = {"world": world_info, "world_dir": str(world_dir), "star": star_summary,
             "vaccine_alignment": [m for j, m in done if j.scenario == scenarios.ALIGNMENT],
             "quick": quick, "seeds": seeds, "workers": workers, "rows": rows,
             "cpu_seconds": {"invocations": invocations, "total": totals}}
    return report.write(outdir, per_seed, testable, extra)


def previous_invocations(summary: Path) -> list[dict]:
    """The CPU seconds of earlier invocations on this outdir, so a resumed run keeps them (issue #24)."""
    if not summary.exists():
        return []
    return json.loads(summary.read_text()).get("cpu_seconds", {}).get("invocations", [])


def job_batches(initial, aligns: list, finetunes: list[list], first: dict, last: dict) -> list[list]:
    """The jobs in three batches (the report is written after each, so a stopped run keeps whole
    batches): the initial model and the rows of `first` ({scenario: methods}: the predictions'),
    every seed; then every seed's Vaccine alignment stage (the longest jobs first) and the other
    rows; then the Vaccine runs (they finetune their seed's stage export) and the rows of `last`."""
    pick = lambda rows: [j for runs in finetunes for j in runs if j.method in rows.get(j.scenario, ())]
    head, tail = pick(first), pick(last)
    vaccine = [j for runs in finetunes for j in runs if j.method == "vaccine"]
    middle = [j for runs in finetunes for j in runs if j not in head + tail + vaccine]
    batches = [[initial, *head], [a for a in aligns if a is not None] + middle, vaccine + tail]
    return [b for b in batches if b]


def main(outdir: str, quick: bool = False, seeds: int = 0, workers: int = 2) -> None:
    run(Path(outdir), quick, seeds or None, workers)
