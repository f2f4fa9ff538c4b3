"""`python -m dss.train --config configs/<x>.py [--config.key=value ...] [--workdir DIR]`

One command runs the whole pipeline: data -> per-example inputs (STAR scores, reference
log-probs: cached in the workdir) -> sharded training with gradient accumulation -> orbax
checkpoints (periodic, final, and on SIGTERM/SIGINT) -> HF export. Running the same command on
an existing workdir resumes exactly where it stopped.

The loop knows no method by name: the objective and the plugins (`dss.methods`) change the run
through their hooks.
"""

from __future__ import annotations

if __name__ == "__main__":  # refuse bad input in seconds, before the imports below load JAX
    from dss import cli, train_checks

    cli.launch("dss.train", check=train_checks.precheck)

import contextlib
import json
import logging
import signal
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax
from etils import epath
from flax import nnx
from tqdm.auto import tqdm
from transformers import AutoTokenizer

import dss.data
import dss.hub
import dss.models
from dss import distributed, methods, sharding, templating, train_checks
from dss import workdir as workdir_lock
from dss.atomic import atomic_file
from dss.checkpoints import Checkpoints
from dss.errors import UserError
from dss.export import export
from dss.health import Health
from dss.run import USER, Data, Run, TrainState
from dss.step import make_train_step
from dss.step import total_steps as step_count

log = logging.getLogger("dss.train")


def train(config, workdir) -> dict:
    """Run (or resume) the configured finetuning; returns the last step's metrics."""
    distributed.initialize(config)
    train_checks.check_train_config(config)  # after initialize (the devices), before anything is loaded
    with workdir_lock.lock(workdir, "dss.train"):  # a second job on this workdir is refused
        with _no_trace_if_refused(Path(workdir)):
            return run_training(config, Path(workdir))


RECORDS = ("dss_config.json", "template_vars.json")


@contextlib.contextmanager
def _no_trace_if_refused(workdir: Path):
    """A run refused before it wrote anything but its records (the model or the data turned out
    unusable) removes the records it made: template_vars.json would fix the run's date although
    nothing ran."""
    before = set(workdir.iterdir()) if workdir.is_dir() else set()
    try:
        yield
    except UserError:
        made = (set(workdir.iterdir()) if workdir.is_dir() else set()) - before
        if distributed.is_writer() and made and {p.name for p in made} <= set(RECORDS):
            for path in made:
                path.unlink()
        raise


def run_training(config, workdir: Path) -> dict:
    """The run itself: data, inputs, state, the loop, the export."""
    run = start(config, workdir)
    active = methods.build(config)
    datasets = load_datasets(run, active)
    inputs = {name: example_inputs(run, active, data, name) for name, data in datasets.items()}  # before the policy
    model = dss.models.load_pretrained(run.model_path, dtype=config.model.dtype, param_dtype=config.model.param_dtype,
                                       mesh=run.mesh, remat=config.train.remat)
    batchers = make_batchers(run, active[0], datasets, inputs, model)
    training = config.train
    run.horizon = batchers[USER].steps_per_epoch * training.epochs  # the schedule's (max_steps may stop sooner)
    state, graphdef, train_step, schedule = build(run, active, model)
    with Loop(run, state, batchers, model.config.vocab_size) as loop:  # closed on every way out
        while loop.step < loop.total_steps and not loop.stopped:
            plans = {m.name: p for m in active if (p := m.plan_step(loop.step, state)) is not None}
            batch = loop.next_batch(next((p.batches for p in plans.values() if p.batches), USER))
            inputs = {name: p.inputs for name, p in plans.items() if p.inputs is not None}
            state.trainable, state.opt_state, out = train_step(state.trainable, state.opt_state, batch, state.consts(),
                                                                inputs, loop.step)
            loop.finish_step(out, {"lr": float(schedule(loop.step)), **{k: v for p in plans.values()
                                                                         for k, v in p.metrics.items()}})
    if loop.stopped:
        loop.exit_stopped()
    if training.export:
        for method in reversed(active):
            state = method.finalize(run, state, graphdef)
        export(nnx.merge(graphdef, state.trainable), run.tokenizer, training.export_dir or run.workdir / "export")
    return loop.metrics


def start(config, workdir: Path) -> Run:
    """The run's directory, settings record, mesh, tokenizer and fixed template variables."""
    model_path = dss.hub.resolve_path(config.model.path)  # a hub id that cannot be fetched fails here
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    workdir.mkdir(parents=True, exist_ok=True)
    if distributed.is_writer():  # not config.json: that marks HF dirs
        with atomic_file(workdir / "dss_config.json") as tmp:
            tmp.write_text(config.to_json_best_effort(indent=2))
    return Run(config, workdir, sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor),
               tokenizer, templating.run_template_vars(config.template, workdir), model_path)


def load_datasets(run: Run, active) -> dict[str, Data]:
    """The user data after every method's `prepare_data` (SEAL selects, SafeInstr adds), and the
    other data sets methods train on (Lisa's alignment data)."""
    data = Data(*dss.data.build_dataset(run.config.data, run.tokenizer, run.template_vars))
    for method in active:
        data = method.prepare_data(run, data)
    log.info("data: %s", json.dumps(data.stats))
    if len(data) < run.config.train.global_batch:
        stats = data.stats
        raise UserError(f"{len(data)} usable examples, fewer than config.train.global_batch = "
                        f"{run.config.train.global_batch} ({stats.get('rows', '?')} rows read, "
                        f"{stats.get('bad_rows', 0)} bad, {stats.get('dropped_too_long', 0)} longer than "
                        f"config.data.max_length = {run.config.data.max_length}); give more data or a smaller batch")
    datasets = {USER: data}
    for method in active:
        datasets.update(method.datasets(run))
    return datasets


def example_inputs(run: Run, active, data: Data, name: str) -> dict:
    """Every method's per-example arrays of a dataset (STAR token weights, RS weights)."""
    out = {}
    for method in active:
        out.update(method.example_inputs(run, data, name))
    return out


def make_batchers(run: Run, objective, datasets: dict[str, Data], inputs: dict, model) -> dict:
    """A batcher per dataset (one fixed length each: one compiled shape), its per-example inputs
    riding along; the reference log-probs first, where the objective needs them."""
    training = run.config.train
    if objective.needs_ref_logp():
        for name, data in datasets.items():
            inputs[name]["ref_logp"] = run.ref_logp(model, data, name)
    return {name: dss.data.StepBatcher(data.encoded, inputs[name], training.global_batch, seed=run.config.seed,
                                       pad_id=run.tokenizer.pad_token_id or 0,
                                       length=dss.data.bucket_length(max(len(e.targets) for e in data.encoded)))
            for name, data in datasets.items()}


def build(run: Run, active, model):
    """(state, graphdef, jitted step, lr schedule) of the run from `model`: loaded, or abstract
    (`dss.models.checkpoint.abstract_pretrained`: every array a ShapeDtypeStruct with the run's
    sharding), which is how `dss.plan` compiles exactly what a run would run."""
    training = run.config.train
    tx, schedule = make_optimizer(training, run.horizon)
    graphdef, params = nnx.split(model)
    state = init_state(run, active, TrainState(params), model, tx)
    step = make_train_step(graphdef, tx, active, training.global_batch // training.micro_batch, run.config.seed)
    return state, graphdef, step, schedule


def init_state(run: Run, active, state: TrainState, model, tx) -> TrainState:
    """Each method's say in what is trained, frozen and checkpointed; then the optimizer state,
    its moments sharded like what they follow (scalars such as the step count replicated)."""
    for method in [*active[1:], active[0]]:  # the objective last: its reference may be the plugins' frozen base
        state = method.init_state(run, state, model)
    state.opt_state = sharding.optimizer_state(tx, state.trainable, run.mesh)
    return state


def make_optimizer(training, total_steps: int):
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=training.lr, warmup_steps=int(round(training.warmup_ratio * total_steps)),
        decay_steps=max(total_steps, 1), end_value=training.min_lr)
    tx = optax.chain(optax.clip_by_global_norm(training.clip),
                     optax.adamw(schedule, b1=training.b1, b2=training.b2, weight_decay=training.weight_decay))
    return tx, schedule


class Loop:
    """A run's step-by-step I/O: resume, batches placed on the mesh, checks of each step's
    metrics, the metrics log, checkpoints and the stop signal. Entered as a context: every
    exit closes the checkpoint manager, the logs and the bar, and gives the signals back."""

    def __init__(self, run: Run, state: TrainState, batchers: dict, vocab_size: int):
        self.run, self.state, self.batchers = run, state, batchers
        training = run.config.train
        self.steps_per_epoch = batchers[USER].steps_per_epoch
        self.total_steps = step_count(self.steps_per_epoch, training.epochs, training.max_steps)
        self.directory = (epath.Path(training.checkpoint_dir) if training.checkpoint_dir
                          else (run.workdir / "checkpoints").absolute())
        self.batch_sharding = sharding.batch_sharding(run.mesh)
        self.rows = sharding.host_rows(self.batch_sharding, training.global_batch)
        self.health = Health(vocab_size, training.lr)
        self.step, self.metrics, self.stopped = 0, {}, False

    def __enter__(self):
        self.stack = contextlib.ExitStack().__enter__()
        trees = self.state.checkpoint_trees()
        self.checkpoints = self.stack.enter_context(
            Checkpoints(self.directory, self.run.config.train.keep, tuple(trees)))
        restored = self.checkpoints.restore_newest(trees)
        if restored is not None:
            self.step, trees, meta = restored
            self.state.restore(trees)
            for name, batcher in self.batchers.items():
                batcher.restore(meta[_position_key(name)])  # refuses if the data or batch settings changed
            log.info("resumed from %s at step %d", self.directory, self.step)
        self.metrics_log = self.stack.enter_context(MetricsLog(self.run.workdir, self.step, self.run.config))
        self.signal = self.stack.enter_context(StopSignal())
        self.bar = self.stack.enter_context(tqdm(total=self.total_steps, initial=self.step, unit="step",
                                                 desc=f"train {self.run.config.objective.name}"))
        self.stack.enter_context(jax.set_mesh(self.run.mesh))
        if self.step >= self.total_steps:
            log.info("the run in %s is complete (step %d of %d): nothing to train", self.run.workdir, self.step,
                     self.total_steps)
            self.metrics = self.metrics_log.last()
        return self

    def __exit__(self, *exc):
        return self.stack.__exit__(*exc)

    def next_batch(self, dataset: str) -> dict:
        """This host's rows of the next batch of `dataset`, placed on the mesh (the step's clock starts)."""
        self.t0 = time.time()
        batch = self.batchers[dataset].take(self.rows)
        self.tokens = self.run.config.train.global_batch * batch["input_ids"].shape[1]
        return {k: sharding.rows_to_global(v, self.rows, self.run.config.train.global_batch, self.batch_sharding)
                for k, v in batch.items()}

    def finish_step(self, out, host_metrics: dict) -> None:
        """Check, log and maybe checkpoint the step just run (the loss is global: every host agrees)."""
        out = {k: float(v) for k, v in jax.device_get(out).items()}
        self.health.check(self.step + 1, out, self.checkpoints.last_good())
        self.metrics = {**out, **host_metrics, "epoch": self.step // self.steps_per_epoch,
                        "tokens_per_s": float(self.tokens / (time.time() - self.t0))}
        self.step += 1
        self.metrics_log.write(self.step, self.metrics)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{out['loss']:.4f}")
        self.stopped = self.signal.should_stop(self.step, self.checkpoints)
        if self.step % self.run.config.train.checkpoint_every == 0 or self.step == self.total_steps or self.stopped:
            meta = {"step": self.step, **{_position_key(name): b.state() for name, b in self.batchers.items()}}
            self.checkpoints.save(self.step, self.state.checkpoint_trees(), meta)

    def exit_stopped(self) -> None:
        log.warning("stopped by signal %d at step %d: checkpoint %d is saved in %s; run the same command to resume",
                    self.signal.received, self.step, self.step, self.directory)
        sys.exit(128 + self.signal.received)


def _position_key(dataset: str) -> str:
    """The checkpoint meta key of a dataset's batcher position: "data" for the user data."""
    return "data" if dataset == USER else f"{dataset}_data"


class StopSignal:
    """Turns SIGTERM/SIGINT (preemption, Ctrl-C) into a stop that every host agrees on.

    On one host both signals set a flag. On several, SIGTERM is left to JAX's preemption sync
    manager (it catches it on any host, and orbax's check reports it on all hosts at the same
    step); SIGINT sets a local flag that `should_stop` shares with a collective."""

    def __init__(self):
        self.received = None
        signals = (signal.SIGINT,) if distributed.is_multihost() else (signal.SIGTERM, signal.SIGINT)
        self.previous = {sig: signal.signal(sig, self._handle) for sig in signals}

    def _handle(self, signum, frame):
        self.received = signum

    def should_stop(self, step: int, checkpoints: Checkpoints) -> bool:
        """The same answer on every host (collectives when multi-host: call it every step)."""
        if not distributed.is_multihost():
            return self.received is not None
        preempted = checkpoints.reached_preemption(step)
        if distributed.agree_any(self.received is not None) or preempted:
            self.received = self.received or signal.SIGTERM
            return True
        return False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        """Give the signals back to whoever handled them before (a caller, pytest, the shell)."""
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class MetricsLog:
    """metrics.jsonl (one object per step), TensorBoard, and wandb when configured. A run that
    starts over (no checkpoint) starts both logs over."""

    def __init__(self, workdir: Path, resume_step: int, config):
        self.path, self.tb_dir = workdir / "metrics.jsonl", workdir / "tensorboard"
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        if self.path.exists():  # drop lines past the checkpoint we resume from: they are redone
            kept = [l for l in self.path.read_text().splitlines() if l and json.loads(l)["step"] <= resume_step]
            self.path.write_text("".join(l + "\n" for l in kept))
        if resume_step == 0 and self.tb_dir.exists():  # old event files would overlap the new steps
            for events in self.tb_dir.glob("events.out.tfevents.*"):
                events.unlink()
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(str(self.tb_dir))
        self.wandb = None
        if config.train.wandb:
            import wandb

            self.wandb = wandb.init(project=config.train.wandb, config=config.to_dict(), dir=str(workdir),
                                    resume="allow")

    def last(self) -> dict:
        """The metrics of the last logged step ({} if none)."""
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        return {k: v for k, v in json.loads(lines[-1]).items() if k != "step"} if lines else {}

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        for k, v in metrics.items():
            self.tb.add_scalar(k, v, step)
        if self.wandb:
            self.wandb.log(metrics, step=step)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.tb.close()


def main(config, workdir) -> None:
    print(json.dumps({"final": train(config, workdir)}))
