"""Device mesh and the one table that maps logical axis names to mesh axes.

Parameters and activations are annotated with logical names ("embed", "mlp", "act_batch", ...);
`RULES` says which mesh axis each name is split over. Changing the parallelism layout means
editing this table, not the model.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated)
RULES: dict[str, str | tuple[str, ...] | None] = {
    # parameters
    "layers": None,  # the stacked blocks' leading axis: every device holds every layer's shard
    "vocab": "tensor",
    "embed": "fsdp",
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "norm": None,
    "lora_rank": None,  # LoRA adapters' inner axis: small, on every device (their other axes follow their kernel)
    # activations
    "act_batch": ("data", "fsdp"),
    "act_seq": None,
    "act_embed": None,
    "act_heads": "tensor",
    "act_vocab": "tensor",
}


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh; one of the sizes may be -1 to take the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    shape = [data, fsdp, tensor]
    if shape.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
    if -1 in shape:
        known = int(np.prod([s for s in shape if s != -1]))
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not split into mesh {shape}")
        shape[shape.index(-1)] = len(devices) // known
    if int(np.prod(shape)) > len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} needs {int(np.prod(shape))} devices, have {len(devices)}")
    devices = devices[: int(np.prod(shape))]  # an explicit smaller mesh uses the first devices
    return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def _mesh_size(mesh, axes) -> int:
    axes = (axes,) if isinstance(axes, str) else axes
    return int(np.prod([mesh.shape[a] for a in axes]))


def partition_spec(logical_axes, shape, mesh, rules=None) -> PartitionSpec:
    """PartitionSpec for an array; a dimension that the mesh axes do not divide stays replicated."""
    rules = RULES if rules is None else rules
    spec, used = [], set()
    for name, size in zip(logical_axes, shape):
        axes = rules.get(name) if name is not None else None
        flat = (axes,) if isinstance(axes, str) else tuple(axes or ())
        flat = tuple(a for a in flat if a not in used and mesh.shape.get(a, 1) > 1)
        if not flat or size % _mesh_size(mesh, flat):
            spec.append(None)
            continue
        used.update(flat)
        spec.append(flat[0] if len(flat) == 1 else flat)
    return PartitionSpec(*spec)


def named_sharding(logical_axes, shape, mesh, rules=None) -> NamedSharding:
    return NamedSharding(mesh, partition_spec(logical_axes, shape, mesh, rules))


def constrain(x: jax.Array, logical_axes) -> jax.Array:
    """Sharding hint for an activation; a no-op outside a mesh context (`jax.set_mesh`): a
    program's activation layout is only the run's when it is traced under the run's mesh (the
    train loop and `dss.plan` trace under it)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, partition_spec(logical_axes, x.shape, mesh))


def platform() -> str:
    """The platform the code being traced will run on: that of the mesh set by `jax.set_mesh`
    (a TPU topology that `dss.plan` compiles for on a CPU host), else this host's default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    return jax.default_backend() if mesh.empty else mesh.abstract_device.platform


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """A global batch's layout: rows split over data x fsdp."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def is_abstract(tree) -> bool:
    """Whether `tree` holds shapes only (ShapeDtypeStructs: a plan), not arrays."""
    return any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(tree))


def optimizer_state(tx, params, mesh: Mesh):
    """`tx.init(params)` with every moment sharded like the parameter it follows and the rest (step
    counts) replicated on `mesh`; ShapeDtypeStructs with those shardings when `params` are
    abstract. One rule for a run and its plan (`jax.eval_shape` alone would drop the shardings)."""
    import optax

    shapes = jax.eval_shape(tx.init, params)
    replicated = NamedSharding(mesh, PartitionSpec())
    where = optax.tree_utils.tree_map_params(tx, lambda _, p: p.sharding, shapes, params,
                                             transform_non_params=lambda _: replicated)
    if is_abstract(params):
        return jax.tree.map(lambda s, w: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=w), shapes, where)
    return jax.jit(tx.init, out_shardings=where)(params)


def place(value: np.ndarray, where: NamedSharding | None) -> jax.Array:
    """A host array laid out by the sharding `where` (None: the default device), each device
    receiving only its shard: no device (or host) ever holds the whole array for a sharded one."""
    if where is None:
        return jax.numpy.asarray(value)
    return jax.make_array_from_callback(value.shape, where, lambda index: value[index])


def to_host(x: jax.Array) -> np.ndarray:
    """The whole array on this host (gathered from every host when it spans several)."""
    if not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def host_rows(sharding: NamedSharding, global_batch: int) -> list[int]:
    """The rows of a global batch that this host's devices hold, in order."""
    rows = set()
    for index in sharding.addressable_devices_indices_map((global_batch,)).values():
        rows.update(range(global_batch)[index[0]])
    return sorted(rows)


def rows_to_global(local: np.ndarray, rows: list[int], global_batch: int, sharding: NamedSharding) -> jax.Array:
    """The global [global_batch, ...] array from this host's `rows` of it (`local`, in that order):
    each device takes its block of rows, so no host holds another host's rows."""
    position = {row: i for i, row in enumerate(rows)}

    def block(index):
        wanted = range(global_batch)[index[0]]
        return local[[position[r] for r in wanted]][(slice(None), *index[1:])]

    return jax.make_array_from_callback((global_batch, *local.shape[1:]), sharding, block)


def replicate_rest(tree, mesh: Mesh):
    """`tree` with every array that is not laid out on a mesh yet (an optimizer's step count)
    replicated on `mesh`; the others (moments that follow the parameters) keep their sharding."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda x: x if isinstance(x.sharding, NamedSharding) else jax.device_put(x, replicated), tree)
