"""`python -m dss.train --config configs/<x>.py [--config.key=value ...] [--workdir DIR]`

One command runs the whole pipeline: data -> STAR scores and reference log-probs (cached in the
workdir, computed only when the objective needs them) -> sharded training with gradient
accumulation -> orbax checkpoints (periodic, final, and on SIGTERM/SIGINT) -> HF export.
Running the same command on an existing workdir resumes exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm
from transformers import AutoTokenizer

import dss.data
import dss.hub
import dss.models
from dss import cache, checks, distributed, lora, objectives, sharding, star, templating
from dss.atomic import atomic_dir, atomic_file
from dss.baselines import lisa, safeinstr, safelora, seal, vaccine
from dss.segments import rs_weight, token_weights

log = logging.getLogger("dss.train")

NEEDS_STAR = ("star_dss", "rs")


def needs_ref_logp(obj) -> bool:
    return obj.name == "deep_token" or (obj.name in ("star_dss", "kl_only") and obj.kl_estimator != "full")


def needs_ref_model(obj) -> bool:
    return obj.name in ("star_dss", "kl_only") and obj.kl_estimator == "full"


# ----------------------------------------------------------------------------- per-example inputs


def star_inputs(config, workdir: Path, examples, encoded, template_vars) -> dict[str, list[np.ndarray]]:
    """STAR token weights (star_dss) or per-example RS weights, from the cache or a fresh pass."""
    trajs = star.cached_score(config, examples, workdir, template_vars)
    if config.objective.name == "rs":
        return {"example_weight": [np.float32(rs_weight(t.safe_prob, config.objective.rs_mode)) for t in trajs]}
    weights = []
    for enc, traj in zip(encoded, trajs):
        w = np.ones(len(enc.targets), np.float32)  # earlier turns (train_on=all) are data, weight 1
        scored = enc.loss_mask & ((enc.response_spans[:, 1] >= 0) | enc.after_response)
        w[scored] = token_weights(traj, enc.response_spans[scored], enc.after_response[scored])
        weights.append(w)
    return {"star_weight": weights}


def reference_logp(model, encoded, fp: str, workdir: Path, batch_tokens: int = 16384) -> dict[str, list[np.ndarray]]:
    """log p_ref(y_t) of every target under the starting model, computed once per dataset."""
    path = workdir / "ref_logp.npz"
    try:
        arrays = cache.load(path, "ref_logp", fp)
    except cache.StaleCacheError:
        log.warning("%s is stale (data or policy changed): recomputing", path)
        arrays = None
    if arrays is None:
        logp_fn = nnx.jit(lambda m, x, y: objectives.token_logp(m(x), y))
        out = [None] * len(encoded)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].targets))
        start = 0
        while start < len(order):  # similar lengths together, about batch_tokens tokens per call
            length = dss.data.bucket_length(len(encoded[order[start]].targets))
            idx = order[start : start + max(1, batch_tokens // length)]
            length = dss.data.bucket_length(max(len(encoded[i].targets) for i in idx))
            x, y = np.zeros((2, len(idx), length), np.int32)
            for b, i in enumerate(idx):
                n = len(encoded[i].targets)
                x[b, :n], y[b, :n] = encoded[i].input_ids[:-1], encoded[i].targets
            logp = np.asarray(logp_fn(model, jnp.asarray(x), jnp.asarray(y)))
            for b, i in enumerate(idx):
                out[i] = logp[b, : len(encoded[i].targets)].astype(np.float32)
            start += len(idx)
        if jax.process_index() == 0:
            cache.save(path, "ref_logp", fp, dict(lengths=np.array([len(a) for a in out]), values=np.concatenate(out)))
        return {"ref_logp": out}
    bounds = np.concatenate([[0], np.cumsum(arrays["lengths"])])
    return {"ref_logp": [arrays["values"][a:b] for a, b in zip(bounds[:-1], bounds[1:])]}


# ----------------------------------------------------------------------------- the step


def objective_from_terms(obj, logp, full_kl, batch, normalizer):
    """The configured objective from per-token label log-probs (and the exact KL when the step
    ran the reference model), with this batch's per-example inputs."""
    mask = batch["loss_mask"]
    if obj.name in ("sft", "vaccine", "lisa"):  # Vaccine and Lisa change the step around SFT's loss
        return objectives.sft_from_terms(logp, mask, normalizer)
    if obj.name == "rs":
        return objectives.rs_from_terms(logp, mask, batch["example_weight"], normalizer)
    if obj.name == "deep_token":
        first, early, early_end, rest = obj.deep_token_betas
        betas = objectives.deep_token_betas(mask, first=first, early=early, early_end=early_end, rest=rest)
        return objectives.deep_token_from_terms(logp, mask, batch["ref_logp"], betas, normalizer)
    if obj.name in ("star_dss", "kl_only"):
        kl = full_kl if obj.kl_estimator == "full" else objectives.label_kl(logp, batch["ref_logp"], mask,
                                                                            obj.kl_estimator)
        if obj.name == "star_dss":
            return objectives.star_dss_from_terms(logp, kl, mask, batch["star_weight"], obj.kl_coef, normalizer)
        return objectives.kl_only_from_terms(logp, kl, mask, normalizer)
    raise ValueError(f"config.objective.name: unknown objective {obj.name!r} "
                     "(star_dss | sft | rs | deep_token | kl_only | vaccine | lisa)")


def make_train_step(graphdef, tx, obj, accum: int, vaccine_rho: float = 0.0, lora_cfg=None, seed: int = 0):
    """Jitted step: accumulate gradients over `accum` micro-batches (losses normalised by the
    response-token count of the whole global batch), then one optimizer update. Logits are made a
    chunk of positions at a time (`objectives.hidden_token_terms`), never whole.

    Objective "vaccine" takes two passes per micro-batch, the second with the hidden states
    perturbed within radius `vaccine_rho` (`dss.baselines.vaccine`). `proximal = (anchor, coef)`
    adds Lisa's coef/2 ||params - anchor||^2 to the step's loss (`dss.baselines.lisa`).

    With `lora_cfg` (`dss.lora`), `params` are the adapters and `frozen` the base parameters they
    sit on: only the adapters are differentiated and updated, and the full-KL reference may be
    `frozen` itself (the base without adapters, no copy). `step_number` draws the adapters'
    dropout masks."""

    def loss_fn(params, micro, normalizer, ref_params, layer_offsets=None, frozen=None, key=None):
        model = nnx.merge(graphdef, params if frozen is None else frozen)
        adapters = None if frozen is None else lora.apply(lora_cfg, params, key)
        tokens = micro["input_ids"]  # right-padded rows: the causal mask keeps pads unseen
        ref = None
        if ref_params is not None:  # full KL: the reference model runs in the step
            ref_model = nnx.merge(graphdef, ref_params)
            ref = (ref_model.logits, ref_model.hidden_states(tokens)[0])
        hidden = model.hidden_states(tokens, layer_offsets=layer_offsets, lora=adapters)[0]
        logp, full_kl = objectives.hidden_token_terms(model.logits, hidden, micro["targets"], ref)
        return objective_from_terms(obj, logp, full_kl, micro, normalizer)

    def micro_grads(params, mb, normalizer, ref_params, frozen, key):
        loss = lambda p, offsets=None: loss_fn(p, mb, normalizer, ref_params, offsets, frozen, key)
        if obj.name != "vaccine":
            return jax.value_and_grad(loss, has_aux=True)(params)
        offsets = vaccine.zero_offsets(nnx.merge(graphdef, params if frozen is None else frozen), mb["input_ids"])
        return vaccine.value_and_grad(loss, params, offsets, vaccine_rho)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, batch, ref_params, proximal=None, frozen=None, step_number=0):
        normalizer = jnp.maximum(batch["loss_mask"].sum(), 1).astype(jnp.float32)
        micro = jax.tree.map(lambda x: micro_batches(x, accum), batch)
        keys = lora.dropout_keys(lora_cfg, seed, step_number, accum)  # None without LoRA dropout

        def body(grads, scanned):
            mb, key = scanned
            (_, metrics), g = micro_grads(params, mb, normalizer, ref_params, frozen, key)
            return jax.tree.map(jnp.add, grads, g), metrics

        grads, metrics = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, params), (micro, keys))
        metrics = {k: v.sum() for k, v in metrics.items()}  # each is normalised globally already
        if proximal is not None:
            grads, metrics["proximal"] = lisa.add_proximal(grads, params, *proximal)
            metrics["loss"] = metrics["loss"] + metrics["proximal"]
        metrics["grad_norm"] = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics

    return step


def micro_batches(x: jax.Array, accum: int) -> jax.Array:
    """[B, ...] -> [accum, B / accum, ...] with micro-batch k = rows k, k + accum, ...: a slice of
    every device's block of rows, so each micro-batch spans every data shard (consecutive blocks
    of rows would leave devices idle)."""
    return x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)


def make_optimizer(t, total_steps: int):
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=t.lr, warmup_steps=int(round(t.warmup_ratio * total_steps)),
        decay_steps=max(total_steps, 1), end_value=t.min_lr)
    tx = optax.chain(optax.clip_by_global_norm(t.clip),
                     optax.adamw(schedule, b1=t.b1, b2=t.b2, weight_decay=t.weight_decay))
    return tx, schedule


# ----------------------------------------------------------------------------- checkpoints


class Checkpoints:
    """orbax CheckpointManager over named array trees (params, opt_state, and e.g. Lisa's anchor)
    and meta (step and data positions). Saving is a collective: every host calls `save` at the
    same step."""

    def __init__(self, directory: epath.Path, keep: int, trees=("params", "opt_state")):
        self.manager = ocp.CheckpointManager(
            directory, item_names=(*trees, "meta"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def reached_preemption(self, step: int) -> bool:
        """Whether a preemption notice (Cloud TPU maintenance, SIGTERM on a multi-host run) came
        to any host; True on every host at the same step (orbax's synced check)."""
        return self.manager.reached_preemption(step)

    def save(self, step: int, trees: dict, meta: dict) -> None:
        if step in self.manager.all_steps():
            return
        self.manager.save(step, args=ocp.args.Composite(
            **{name: ocp.args.StandardSave(tree) for name, tree in trees.items()}, meta=ocp.args.JsonSave(meta)))

    def restore(self, step: int, like: dict) -> tuple[dict, dict]:
        """The trees saved at `step`, with the shapes, dtypes and shardings of `like`, and meta."""
        abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
        out = self.manager.restore(step, args=ocp.args.Composite(
            **{name: ocp.args.StandardRestore(abstract(tree)) for name, tree in like.items()},
            meta=ocp.args.JsonRestore()))
        return {name: out[name] for name in like}, out.meta


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


# ----------------------------------------------------------------------------- metrics


class MetricsLog:
    """metrics.jsonl (one object per step), TensorBoard, and wandb when configured."""

    def __init__(self, workdir: Path, resume_step: int, wandb_project: str, config):
        self.path = workdir / "metrics.jsonl"
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        if self.path.exists():  # drop lines past the checkpoint we resume from: they are redone
            kept = [l for l in self.path.read_text().splitlines() if l and json.loads(l)["step"] <= resume_step]
            self.path.write_text("".join(l + "\n" for l in kept))
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(str(workdir / "tensorboard"))
        self.wandb = None
        if wandb_project:
            import wandb

            self.wandb = wandb.init(project=wandb_project, config=config.to_dict(), dir=str(workdir), resume="allow")

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


# ----------------------------------------------------------------------------- the run


def train(config, workdir) -> dict:
    """Run (or resume) the configured finetuning; returns the last step's metrics."""
    distributed.initialize(config)
    checks.check_train_config(config)  # after initialize (it builds the mesh), before anything is loaded
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if distributed.is_writer():  # not config.json: that marks HF dirs
        with atomic_file(workdir / "dss_config.json") as tmp:
            tmp.write_text(config.to_json_best_effort(indent=2))
    t, obj = config.train, config.objective
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)

    model_path = dss.hub.resolve_path(config.model.path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    template_vars = templating.run_template_vars(config.template, workdir)
    encoded, examples, stats = dss.data.build_dataset(config.data, tokenizer, template_vars)
    encoded, examples, stats = seal.select(config, workdir, tokenizer, template_vars, encoded, examples, stats)
    encoded, examples, stats = safeinstr.add_safety_data(config, tokenizer, template_vars, encoded, examples, stats)
    log.info("data: %s", json.dumps(stats))
    if len(encoded) < t.global_batch:
        raise ValueError(f"{len(encoded)} usable examples, fewer than config.train.global_batch={t.global_batch}")
    aligned = lisa.encode_alignment_data(config, tokenizer, template_vars) if obj.name == "lisa" else None

    extras = {}
    if obj.name in NEEDS_STAR:
        extras.update(star_inputs(config, workdir, examples, encoded, template_vars))
    model = dss.models.load_pretrained(model_path, dtype=config.model.dtype, param_dtype=config.model.param_dtype, mesh=mesh,
                                       remat=t.remat)
    if needs_ref_logp(obj):
        fp = cache.fingerprint("ref_logp", cache.weights_fingerprint(model_path), config.model.dtype,
                               [e.input_ids.tolist() for e in encoded])
        extras.update(reference_logp(model, encoded, fp, workdir))

    steps_per_epoch = len(encoded) // t.global_batch
    total_steps = steps_per_epoch * t.epochs if t.max_steps < 0 else min(t.max_steps, steps_per_epoch * t.epochs)
    tx, schedule = make_optimizer(t, steps_per_epoch * t.epochs)
    graphdef, params = nnx.split(model)
    frozen = None  # LoRA: the base's parameters, frozen beside the adapters (`params`, what is trained)
    if config.lora.enabled:
        frozen, params = params, lora.init(config.lora, model, config.seed, mesh)
        if config.safelora.enabled:  # a base model that does not fit is refused now, not after training
            safelora.check_base(config.safelora, model_path, model.config, config.lora.targets)
    ref_params = None
    if needs_ref_model(obj):  # full KL; under LoRA the frozen base itself, no copy
        ref_params = jax.tree.map(jnp.copy, params) if frozen is None else frozen
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_state = jax.tree.map(  # moments follow the parameters' shardings; scalars (count) replicate
        lambda x: x if isinstance(x.sharding, NamedSharding) else jax.device_put(x, replicated), tx.init(params))
    length = dss.data.bucket_length(max(len(e.targets) for e in encoded))  # one shape, one compile
    batches = dss.data.StepBatcher(encoded, extras, t.global_batch, seed=config.seed, pad_id=tokenizer.pad_token_id or 0,
                                   length=length)
    batch_sharding = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    rows = host_rows(batch_sharding, t.global_batch)
    train_step = make_train_step(graphdef, tx, obj, t.global_batch // t.micro_batch, config.vaccine.rho,
                                 config.lora if frozen is not None else None, config.seed)
    horizon = steps_per_epoch * t.epochs  # the schedule's steps (max_steps may stop sooner)
    bistate = None if aligned is None else lisa.BiState(config.lisa, batches, aligned, horizon, params)
    metrics, stopped = {}, False
    with contextlib.ExitStack() as cleanup:  # closed on every way out, an exception included
        checkpoint_dir = epath.Path(t.checkpoint_dir) if t.checkpoint_dir else (workdir / "checkpoints").absolute()
        # what a checkpoint holds, read when called: the current params (LoRA: the adapters alone),
        # opt_state (and Lisa's anchor)
        trained = "params" if frozen is None else "adapters"
        state_trees = lambda: {trained: params, "opt_state": opt_state, **(bistate.trees() if bistate else {})}
        checkpoints = cleanup.enter_context(Checkpoints(checkpoint_dir, t.keep, tuple(state_trees())))
        step = 0
        if checkpoints.latest() is not None:
            trees, meta = checkpoints.restore(checkpoints.latest(), state_trees())
            params, opt_state, step = trees[trained], trees["opt_state"], meta["step"]
            batches.restore(meta["data"])  # refuses if the data or batch settings changed
            if bistate:
                bistate.restore(trees, meta)
            log.info("resumed from %s at step %d", checkpoint_dir, step)
        metrics_log = cleanup.enter_context(MetricsLog(workdir, step, t.wandb, config))
        stop = cleanup.enter_context(StopSignal())
        bar = cleanup.enter_context(tqdm(total=total_steps, initial=step, desc=f"train {obj.name}", unit="step"))
        cleanup.enter_context(jax.set_mesh(mesh))
        while step < total_steps:
            t0 = time.time()
            feed, proximal = bistate.before_step(step, params) if bistate else (batches, None)
            batch = feed.take(rows)
            device_batch = {k: _to_global(v, rows, t.global_batch, batch_sharding) for k, v in batch.items()}
            new_params, new_opt_state, out = train_step(params, opt_state, device_batch, ref_params, proximal, frozen,
                                                        step)
            out = {k: float(v) for k, v in jax.device_get(out).items()}
            if not np.isfinite(out["loss"]):  # the loss is global: every host stops here
                raise FloatingPointError(
                    f"non-finite loss {out['loss']} at step {step + 1}; the last good checkpoint is step "
                    f"{checkpoints.latest()} in {checkpoint_dir} (try a lower config.train.lr)")
            params, opt_state, step = new_params, new_opt_state, step + 1
            metrics = {**out, "lr": float(schedule(step - 1)), "epoch": (step - 1) // steps_per_epoch,
                       "tokens_per_s": float(t.global_batch * batch["input_ids"].shape[1] / (time.time() - t0))}
            if bistate:
                metrics["alignment_state"] = float(bistate.state(step - 1) == lisa.ALIGNMENT)
            metrics_log.write(step, metrics)
            bar.update(1)
            bar.set_postfix(loss=f"{out['loss']:.4f}")
            stopped = stop.should_stop(step, checkpoints)
            if step % t.checkpoint_every == 0 or step == total_steps or stopped:
                checkpoints.save(step, state_trees(), {"step": step, "data": batches.state(),
                                                       **(bistate.meta() if bistate else {})})
            if stopped:
                break
    if stopped:
        log.warning("stopped by signal %d at step %d; run the same command to resume", stop.received, step)
        sys.exit(128 + stop.received)
    if t.export:
        final = (nnx.merge(graphdef, params) if frozen is None
                 else merged_lora(config, workdir, nnx.merge(graphdef, frozen), params))
        export(final, tokenizer, t.export_dir or workdir / "export")
    return metrics


def merged_lora(config, workdir: Path, base, adapters):
    """A LoRA run's model to export: its adapters (projected by SafeLoRA when that is on) merged
    into the base, after the adapter alone is written in PEFT layout (`config.lora.adapter_dir`)."""
    tensors = lora.to_peft(base.config, adapters)
    if config.safelora.enabled:
        tensors = safelora.project(config.safelora, config.model.path, tensors, workdir)
        adapters = lora.from_peft(base.config, tensors, adapters)
    if distributed.is_writer():
        lora.save_peft(tensors, config.lora, base.config, config.model.path, config.lora.adapter_dir or workdir / "adapter")
    return lora.merged(base, config.lora, adapters)


def host_rows(sharding: NamedSharding, global_batch: int) -> list[int]:
    """The rows of a global batch that this host's devices hold, in order."""
    rows = set()
    for index in sharding.addressable_devices_indices_map((global_batch,)).values():
        rows.update(range(global_batch)[index[0]])
    return sorted(rows)


def _to_global(local: np.ndarray, rows: list[int], global_batch: int, sharding: NamedSharding) -> jax.Array:
    """The global [global_batch, ...] array from this host's `rows` of it (`local`, in that order):
    each device takes its block of rows, so no host holds another host's rows."""
    position = {row: i for i, row in enumerate(rows)}

    def block(index):
        wanted = range(global_batch)[index[0]]
        return local[[position[r] for r in wanted]][(slice(None), *index[1:])]

    return jax.make_array_from_callback((global_batch, *local.shape[1:]), sharding, block)


def export(model, tokenizer, out_dir) -> None:
    """HF directory (weights, config, tokenizer, chat template), swapped in only when complete.
    Every host takes part (the weights are gathered from all of them); process 0 writes. A remote
    `out_dir` (gs://...) is written locally first, then copied file by file, config.json last, so
    an interrupted copy is never a loadable model."""
    if not distributed.is_writer():
        dss.models.save_pretrained(model, Path(str(out_dir)))  # joins the gather; only process 0 writes
    elif _is_local(out_dir):
        with atomic_dir(Path(out_dir)) as tmp:
            dss.models.save_pretrained(model, tmp)
            tokenizer.save_pretrained(tmp)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            dss.models.save_pretrained(model, tmp)
            tokenizer.save_pretrained(tmp)
            remote = epath.Path(out_dir)
            remote.mkdir(parents=True, exist_ok=True)
            for file in sorted(Path(tmp).iterdir(), key=lambda f: f.name == "config.json"):
                with open(file, "rb") as src, (remote / file.name).open("wb") as dst:
                    shutil.copyfileobj(src, dst, 64 << 20)
    if distributed.is_writer():
        log.info("exported %s", out_dir)
    distributed.barrier("dss.train export")


def _is_local(path) -> bool:
    return "://" not in str(path)


def main(config, workdir) -> None:
    print(json.dumps({"final": train(config, workdir)}))


if __name__ == "__main__":
    from dss import cli

    cli.run(main)
