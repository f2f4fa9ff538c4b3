"""`python -m dss.plan --config C --topology v5e:2x4 [--num_slices N] [--out FILE] [--mfu 0.4]`

Compiles a run's real programs for TPU chips it does not have: on any machine with `jax[tpu]`
installed (its libtpu compiles for a topology without one), `get_topology_desc` gives the target
devices, the run's state is built abstractly (shapes, dtypes and the real run's shardings, from
config.json alone: no weights read) by the same function `dss.train` uses (`dss.train.build`),
and the jitted train step and the STAR scoring programs of the config's guardrails are lowered
and compiled for that topology. Per device: parameters, optimizer state, the compiler's
arguments / temporaries / total against the chip's HBM, fits or not (with the compiler's own
message when not); matmul FLOPs per step counted from the step's program (every scan's length
included; XLA's cost_analysis counts a scanned body once) and the step time they imply at a
stated MFU. Written as JSON with `--out`.

The config is checked against the target's devices (mesh, batch sizes, micro-batches over
data x fsdp), not this host's. Batches are planned at their longest (`data.max_length`).
"""

from __future__ import annotations

if __name__ == "__main__":  # refuse bad input in seconds, before the imports below load JAX
    from dss import cli, train_checks

    cli.launch("dss.plan", check=lambda config, workdir, **_: train_checks.check_settings(config), options={
        "topology": ("", "target TPU topology, <chip>:<shape>, e.g. v5e:2x4, v6e:2x2, v5p:2x2x1"),
        "num_slices": (1, "slices of that topology (multi-slice: the mesh spans them all)"),
        "out": ("", "write the plan as JSON to this file"),
        "mfu": (0.4, "model FLOPs utilisation assumed for the implied step time"),
    })

import dataclasses
import json
import math
import time
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

import dss.hub
from dss import methods, sharding, star_plan, train, train_checks
from dss.data.chat import Encoded
from dss.errors import UserError
from dss.models.checkpoint import abstract_pretrained
from dss.run import USER, Data, Run
from dss.segments import Trajectory

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    hbm_bytes: int  # published HBM per chip
    peak_flops: float  # published dense bf16 FLOP/s per chip


CHIPS = {  # jax device_kind -> the chip's published figures (Cloud TPU system architecture pages)
    "TPU v4": Chip("v4", 32 * GIB, 275e12),
    "TPU v5 lite": Chip("v5e", 16 * GIB, 197e12),
    "TPU v5": Chip("v5p", 95 * GIB, 459e12),
    "TPU v6 lite": Chip("v6e", 32 * GIB, 918e12),
}

# STAR's renderings: the guardrail's template around a conversation adds tokens to the policy's
# `data.max_length`; a shared template head and a suffix (the next chunk and the template's tail)
# of these sizes are what the plan compiles for (dss.star_kernels' shared-KV calls).
TEMPLATE_TOKENS, HEAD_TOKENS, SUFFIX_TOKENS = 512, 256, 64


def target_devices(topology: str, num_slices: int = 1) -> list:
    """The devices of a TPU topology (`<chip>:<shape>`), compiled for from this host."""
    import os

    from jax.experimental import topologies

    # libtpu's lockfile guards a host's chips; compiling for a topology uses none, and any JAX
    # process on this host that probed for a TPU holds it
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        return list(topologies.get_topology_desc(topology_name=topology, platform="tpu",
                                                 num_slices=num_slices).devices)
    except Exception as err:  # no libtpu, or a name libtpu refuses
        raise UserError(f"--topology {topology!r} (--num_slices {num_slices}): no TPU topology of that name "
                        f"({' '.join(str(err).split())[:300]}); the form is <chip>:<shape>, e.g. v5e:2x4, "
                        "v5p:2x2x1, and it needs jax[tpu] installed (pip install -e '.[tpu]')") from None


def chip_of(devices) -> Chip:
    kind = devices[0].device_kind
    return CHIPS.get(kind, Chip(kind, 0, 0.0))


def check_micro_batches(config, mesh) -> None:
    """Each micro-batch spans every data shard (`dss.step.micro_batches`), so data x fsdp must
    divide `train.micro_batch` too, or devices sit idle on padding."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if config.train.micro_batch % shards:
        raise UserError(f"config.train.micro_batch = {config.train.micro_batch}: every micro-batch is split over the "
                        f"mesh's data x fsdp = {shards} devices; use a multiple of {shards} (or change config.mesh)")


# ----------------------------------------------------------------------------- the run, abstractly


@dataclasses.dataclass
class PlanRun(Run):
    """A `Run` whose per-example services answer with stand-ins of the right shapes (every prefix
    safe, reference log-probs 0), so the methods' hooks build the batch a real run would."""

    weights_on_disk: bool = False

    def star(self, data, name):
        return [Trajectory([len(e["response"])], [1.0]) for e in data.examples]

    def ref_logp(self, model, data, name):
        return [np.zeros(len(e.targets), np.float32) for e in data.encoded]


def longest_examples(config) -> Data:
    """`train.global_batch` examples of `data.max_length` tokens, half prompt, half response."""
    n = config.data.max_length - 1
    response = np.arange(n) >= n // 2
    spans = np.where(response[:, None], np.stack([np.arange(n), np.arange(n) + 1], 1) - n // 2, -1).astype(np.int32)
    encoded = Encoded(np.zeros(n + 1, np.int32), np.zeros(n, np.int32), response, spans, np.zeros(n, bool),
                      n // 2, n - n // 2, False)
    example = {"prompt": "", "response": "x" * (n - n // 2)}
    return Data([encoded] * config.train.global_batch, [example] * config.train.global_batch, {})


def abstract(tree, mesh):
    """Every leaf as a ShapeDtypeStruct; a leaf without a mesh sharding (a host scalar) replicated on `mesh`."""
    replicated = NamedSharding(mesh, PartitionSpec())

    def one(x):
        where = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x),
                                    sharding=where if isinstance(where, NamedSharding) else replicated)

    return jax.tree.map(one, tree)


@dataclasses.dataclass
class Planned:
    """A run built abstractly: what `dss.train` would build, every array a ShapeDtypeStruct."""

    run: Run
    active: list
    model: object
    state: object
    graphdef: object
    step: object
    batch: dict
    inputs: dict


def build_abstract(config, devices) -> Planned:
    """The run of `config` on `devices`, abstractly; the config checked against those devices first."""
    train_checks.check_train_config(config, devices)
    m = config.mesh
    mesh = sharding.make_mesh(m.data, m.fsdp, m.tensor, devices=devices)
    check_micro_batches(config, mesh)
    active = methods.build(config)
    run = PlanRun(config, None, mesh, types.SimpleNamespace(pad_token_id=0), {}, model_config_dir(config.model.path))
    model = abstract_pretrained(run.model_path, dtype=config.model.dtype, param_dtype=config.model.param_dtype,
                                mesh=mesh, remat=config.train.remat)
    data = longest_examples(config)
    inputs = {USER: train.example_inputs(run, active, data, USER)}
    batcher = train.make_batchers(run, active[0], {USER: data}, inputs, model)[USER]
    run.horizon = batcher.steps_per_epoch * config.train.epochs
    state, graphdef, step, _ = train.build(run, active, model)
    rows = sharding.batch_sharding(mesh)  # as the loop places a batch
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=rows) for k, v in batcher.take().items()}
    plans = {m.name: p for m in active if (p := m.plan_step(0, state)) is not None}
    step_inputs = abstract({name: p.inputs for name, p in plans.items() if p.inputs is not None}, mesh)
    return Planned(run, active, model, state, graphdef, step, batch, step_inputs)


def model_config_dir(path) -> str:
    """A directory with the model's config.json: a local directory or `tiny:` asset as is, a hub
    id's config.json alone (no weights downloaded)."""
    path = str(path)
    if path.startswith(dss.hub.TINY_PREFIX) or Path(path).expanduser().is_dir():
        return str(dss.hub.resolve_path(path))
    from huggingface_hub import hf_hub_download

    try:
        return str(Path(hf_hub_download(path, "config.json")).parent)
    except Exception as err:
        raise UserError(f"{path}: not a local directory, and its config.json could not be fetched from the Hugging "
                        f"Face Hub ({' '.join(str(err).split())[:200]}); give a directory holding its config.json")


# ----------------------------------------------------------------------------- figures


def per_device_bytes(tree) -> int:
    """Bytes one device holds of `tree` (every leaf's shard), from the shapes and shardings alone."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += math.prod(shape) * jnp.dtype(x.dtype).itemsize
    return total


def global_bytes(tree) -> int:
    return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _sub_jaxprs(value):
    from jax.extend import core

    if isinstance(value, core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, core.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _sub_jaxprs(v)


def matmul_flops(jaxpr) -> int:
    """FLOPs of every dot_general a program runs (2 per multiply-add), each scan's body counted
    `length` times, the costliest branch of a cond; what the whole (global) program computes."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
            lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
            total += 2 * math.prod(lhs) * math.prod(d for i, d in enumerate(rhs) if i not in (*rhs_contract, *rhs_batch))
        if eqn.primitive.name == "cond":
            total += max(matmul_flops(b.jaxpr) for b in eqn.params["branches"])
            continue
        inner = sum(matmul_flops(j) for v in eqn.params.values() for j in _sub_jaxprs(v))
        total += inner * (eqn.params["length"] if eqn.primitive.name == "scan" else 1)
    return total


def model_flops_per_token(cfg, length: int) -> float:
    """PaLM's model FLOPs of one trained token (forward + backward): 6 x the matmul weights
    (lm_head included) + 12 x layers x heads x head_dim x length (attention scores and values)."""
    e, h, k, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    per_layer = e * (h + 2 * k) * d + h * d * e + 3 * e * cfg.intermediate_size
    return 6 * (cfg.num_layers * per_layer + e * cfg.vocab_size) + 12 * cfg.num_layers * h * d * length


def compiled_figures(lowered) -> dict:
    """The compiler's per-device memory of a lowered program, or why it does not fit (its own
    message: a program too big for HBM fails to compile)."""
    start = time.time()
    try:
        compiled = lowered.compile()
    except Exception as err:  # XLA's RESOURCE_EXHAUSTED comes as a JaxRuntimeError
        message = " ".join(str(err).split())
        if "RESOURCE_EXHAUSTED" not in message and "memory" not in message.lower():
            raise
        return {"fits": False, "compiler": message[:600], "compile_s": round(time.time() - start, 1)}
    mem = compiled.memory_analysis()
    total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
             + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
    return {"fits": True, "arguments_bytes": mem.argument_size_in_bytes,
            "outputs_not_aliased_bytes": mem.output_size_in_bytes - mem.alias_size_in_bytes,
            "temporaries_bytes": mem.temp_size_in_bytes, "code_bytes": mem.generated_code_size_in_bytes,
            "total_bytes": total, "compile_s": round(time.time() - start, 1)}


def _with_hbm(figures: dict, chip: Chip, held_beside: int = 0) -> dict:
    """Whether a compiled program fits the chip's HBM, with `held_beside` bytes of other live
    arrays (STAR's batch cache, alive across its calls) next to it."""
    if figures["fits"] and chip.hbm_bytes:
        needed = figures["total_bytes"] + held_beside
        figures["fits"] = needed <= chip.hbm_bytes
        if not figures["fits"]:
            figures["compiler"] = f"compiled, but needs {needed / GIB:.2f} GiB of the chip's {chip.hbm_bytes / GIB:.2f} GiB"
    return figures


# ----------------------------------------------------------------------------- the programs


def plan_train(config, devices, mfu: float = 0.4) -> dict:
    """The train step of `config` compiled for `devices`: per-device figures, FLOPs, implied time."""
    chip = chip_of(devices)
    p = build_abstract(config, devices)
    run, state, batch = p.run, p.state, p.batch
    start = time.time()
    with jax.set_mesh(run.mesh):  # sharding.constrain reads it: lowering sees the run's activation layout
        traced = p.step.trace(state.trainable, state.opt_state, batch, state.consts(), p.inputs, 0)
        lowered = traced.lower()
    lower_s = time.time() - start
    flops = matmul_flops(traced.jaxpr.jaxpr)
    cfg = p.model.config
    tokens, length = batch["input_ids"].shape[0] * batch["input_ids"].shape[1], batch["input_ids"].shape[1]
    n = len(run.mesh.devices.flat)
    out = {
        "methods": [m.name for m in p.active], "mesh": dict(run.mesh.shape), "devices": n,
        "batch": list(batch["input_ids"].shape), "micro_batch": config.train.micro_batch, "remat": config.train.remat,
        "per_device": {
            "trainable_bytes": per_device_bytes(state.trainable),
            "frozen_bytes": per_device_bytes(state.frozen),
            "reference_bytes": per_device_bytes(state.reference) if state.reference is not state.frozen else 0,
            "extra_bytes": per_device_bytes(state.extra),
            "optimizer_bytes": per_device_bytes(state.opt_state),
            "batch_bytes": per_device_bytes(batch),
        },
        "global": {"trainable_bytes": global_bytes(state.trainable), "optimizer_bytes": global_bytes(state.opt_state)},
        "step_matmul_flops": flops,
        "model_flops_sft_formula": model_flops_per_token(cfg, length) * tokens,
        "lower_s": round(lower_s, 1),
    }
    out["per_device"].update(_with_hbm(compiled_figures(lowered), chip))
    if chip.peak_flops:
        out["implied_step_s"] = {"mfu": mfu, "seconds": flops / (n * chip.peak_flops * mfu)}
    return out


def plan_star(config, devices) -> list[dict]:
    """The STAR scoring programs of each guardrail of `config` at the run's shapes (renderings of
    up to data.max_length + TEMPLATE_TOKENS tokens, config.star.token_budget tokens a call), on
    the guardrail mesh (config.guardrail.mesh over `devices`, else their first device, as a run's
    host scores its share on one device)."""
    from dss import star_kernels

    g, s = config.guardrail, config.star
    chip = chip_of(devices)
    mesh = sharding.make_mesh(*g.mesh, devices=devices) if g.mesh else sharding.make_mesh(1, 1, 1, devices=devices[:1])
    multiple = mesh.shape["data"] * mesh.shape["fsdp"]
    rest = config.data.max_length + TEMPLATE_TOKENS - HEAD_TOKENS
    _, _, size = next(star_plan.length_batches([rest] * 4096, s.token_budget, multiple, star_plan.BATCH_STEP))
    prefill_len = star_plan.bucket(rest, star_plan.PREFILL_STEP)
    width = star_plan.bucket(SUFFIX_TOKENS, star_plan.SUFFIX_STEP)
    visible = min(star_plan.bucket(HEAD_TOKENS + rest, star_plan.CACHE_STEP), HEAD_TOKENS + prefill_len)
    rows = star_plan.rows_per_call(width, HEAD_TOKENS + rest, s.token_budget, multiple, 1 << 20)
    rows_sharding = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    replicated = NamedSharding(mesh, PartitionSpec())

    def ints(*shape, where=rows_sharding):
        return jax.ShapeDtypeStruct(shape, jnp.int32, sharding=where if shape[0] % multiple == 0 else replicated)

    verdict = ints(2, where=replicated)
    out = []
    for path in g.paths:
        model = abstract_pretrained(model_config_dir(path), dtype=g.dtype, mesh=mesh)
        graphdef, state = nnx.split(model)
        head = kv_cache(model, 1, HEAD_TOKENS, mesh)
        batch_cache = kv_cache(model, size, HEAD_TOKENS + prefill_len, mesh)
        suffix_cache = kv_cache(model, rows, visible + width, mesh)
        programs = {
            "prefill": (star_kernels.prefill, (graphdef, state, head, ints(size, prefill_len), ints(size), verdict)),
            "suffix_logits": (star_kernels.suffix_logits, (graphdef, state, suffix_cache, ints(rows, width),
                                                           ints(rows, width), ints(rows, width), ints(rows, width),
                                                           ints(rows, 1), verdict)),
        }
        if s.method == "naive":
            naive_len = star_plan.bucket(rest + HEAD_TOKENS, star_plan.NAIVE_STEP)
            naive_rows = next(star_plan.length_batches([naive_len] * 4096, s.token_budget, multiple,
                                                       star_plan.NAIVE_STEP))[2]
            programs = {"last_logits": (star_kernels.last_logits, (graphdef, state, ints(naive_rows, naive_len),
                                                                   ints(naive_rows), verdict))}
        for name, (fn, args) in programs.items():
            with jax.set_mesh(mesh):
                lowered = fn.lower(*args)
            figures = _with_hbm(compiled_figures(lowered), chip, per_device_bytes(batch_cache))
            out.append({"guardrail": str(path), "program": name, "devices": len(mesh.devices.flat),
                        "shapes": {"rows": int(args[3].shape[0]), "tokens": int(args[3].shape[1])}
                        if name != "suffix_logits" else {"rows": rows, "width": width, "cached": visible},
                        "parameters_bytes": per_device_bytes(state),
                        "batch_cache_bytes": per_device_bytes(batch_cache), **figures})
    return out


def kv_cache(model, rows: int, slots: int, mesh):
    """An abstract KV cache, its rows split over the mesh's data x fsdp where they divide."""
    cache = jax.eval_shape(lambda: model.init_cache(rows, slots))
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    split = ("data", "fsdp") if rows % shards == 0 else None
    specs = (PartitionSpec(None, split), PartitionSpec(None, split), PartitionSpec(split))
    return type(cache)(*(jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec))
                         for x, spec in zip(cache, specs)))


def plan(config, topology: str, num_slices: int = 1, mfu: float = 0.4) -> dict:
    """The train step and the STAR programs (when the objective scores with STAR) of `config` on a TPU topology."""
    devices = target_devices(topology, num_slices)
    chip = chip_of(devices)
    out = {"topology": topology, "num_slices": num_slices, "chip": chip.name, "devices": len(devices),
           "hosts": len({d.process_index for d in devices}), "hbm_bytes_per_chip": chip.hbm_bytes,
           "peak_flops_per_chip": chip.peak_flops, "model": str(config.model.path), "dtype": config.model.dtype,
           "param_dtype": config.model.param_dtype, "train": plan_train(config, devices, mfu)}
    if methods.objective_class(config).scores_star:
        out["star"] = plan_star(config, devices)
    return out


def summary(result: dict) -> str:
    """The plan as a few lines: per device, what the step holds and whether it fits."""
    gib = lambda b: f"{b / GIB:.2f} GiB"
    t, d = result["train"], result["train"]["per_device"]
    lines = [f"{result['topology']} x{result['num_slices']} ({result['devices']} {result['chip']} chips, "
             f"{result['hosts']} hosts, {gib(result['hbm_bytes_per_chip'])} HBM each): {'+'.join(t['methods'])}, "
             f"batch {t['batch']}, micro {t['micro_batch']}, remat {t['remat']}, mesh {t['mesh']}",
             f"  per device: trainable {gib(d['trainable_bytes'])}, frozen {gib(d['frozen_bytes'] + d['reference_bytes'])}"
             f", extra {gib(d['extra_bytes'])}, optimizer {gib(d['optimizer_bytes'])}"]
    if d["fits"]:
        lines.append(f"  compiled: arguments {gib(d['arguments_bytes'])}, temporaries {gib(d['temporaries_bytes'])}, "
                     f"total {gib(d['total_bytes'])}: fits")
    else:
        lines.append(f"  does not fit: {d['compiler']}")
    if "implied_step_s" in t:
        lines.append(f"  {t['step_matmul_flops']:.3g} matmul FLOPs per step: {t['implied_step_s']['seconds']:.2f} s "
                     f"at {t['implied_step_s']['mfu']:.0%} MFU")
    for p in result.get("star", []):
        state = (f"total {gib(p['total_bytes'])} + batch cache {gib(p['batch_cache_bytes'])}: fits" if p["fits"]
                 else f"does not fit: {p['compiler']}")
        lines.append(f"  STAR {p['program']} ({p['guardrail']}, {p['devices']} device(s), {p['shapes']}): {state}")
    return "\n".join(lines)


def main(config, workdir, topology: str, num_slices: int, out: str, mfu: float) -> None:
    if not topology:
        raise UserError("python -m dss.plan: --topology is required, e.g. --topology v5e:2x4")
    result = plan(config, topology, num_slices, mfu)
    print(summary(result))
    if out:
        Path(out).write_text(json.dumps(result, indent=2))
