"""Every setting `python -m dss.train` can find wrong, refused by key before anything loads.

`check_settings` reads the config alone (no JAX: the command line runs it within seconds of
launch); `check_train_config` adds what depends on the devices (mesh shape, batch sizes the
mesh must split), for this host's devices or a target's (`dss.plan`).
"""

from __future__ import annotations

from dss import checks, methods
from dss.errors import UserError

TRAIN_ON = ("last", "all")
ON_BAD_ROW = ("error", "drop")
REMAT_POLICIES = ("none", "full", "save_dots")  # dss.models.transformer.REMAT_POLICIES (tested equal)


def check_settings(config) -> None:
    """The generic settings of a training run, then each active method's own."""
    active = methods.active(config)  # refuses an unknown objective first
    checks.one_of(config, "data.train_on", TRAIN_ON, "train_on")
    checks.one_of(config, "train.remat", REMAT_POLICIES, "remat policy")
    if not config.model.path:
        raise UserError("config.model.path = '': give the policy to finetune (HF directory or hub id)")
    checks.sources(config, "data.sources", "no finetuning data", files=False)
    checks.one_of(config, "data.on_bad_row", ON_BAD_ROW, "bad-row policy")
    checks.divides(config, "train.global_batch", "train.micro_batch")
    checks.positive_int(config, "train.epochs")
    checks.steps_or_all(config, "train.max_steps")
    checks.positive_number(config, "train.lr", "learning rate")
    checks.positive_int(config, "train.checkpoint_every")
    for objective in methods.objectives():
        objective.check_settings(config)
    for method in active:
        method.check(config)
    checks.model_name(config, "model.path", str(config.model.path))  # after the settings: a file-system check


def precheck(config, workdir) -> None:
    """What the command line refuses before anything heavy is imported: the settings, then every
    row of the local data files, read as training will read them."""
    from dss import workdir as workdir_lock
    from dss.data.sources import check_sources  # light: parses files, imports no datasets/transformers

    check_settings(config)
    check_sources(config.data.sources, where="config.data.sources")
    workdir_lock.check_free(workdir, config)


def check_devices(config, devices) -> None:
    """The mesh on `devices` and the batch sizes it splits, by key."""
    from dss import sharding  # builds a mesh: JAX

    def mesh_of(key: str, shape):
        try:
            return sharding.make_mesh(*shape, devices=devices)
        except (TypeError, ValueError) as err:
            raise UserError(f"config.{key} = {tuple(shape)} (data, fsdp, tensor): {err}") from None

    m = config.mesh
    mesh = mesh_of("mesh", (m.data, m.fsdp, m.tensor))
    if methods.objective_class(config).scores_star and config.guardrail.mesh:
        mesh_of("guardrail.mesh", config.guardrail.mesh)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if config.train.global_batch % shards:
        raise UserError(f"config.train.global_batch = {config.train.global_batch}: the batch is split over the mesh's "
                        f"data x fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']} devices (config.mesh, "
                        f"{len(mesh.devices.flat)} devices in all); use a multiple of {shards}")
    for method in methods.active(config):
        method.check_shards(config, shards)


def check_train_config(config, devices=None) -> None:
    """`check_settings`, then `check_devices` on `devices` (default: this host's, `jax.devices()`)."""
    check_settings(config)
    if devices is None:
        import jax

        devices = jax.devices()
    check_devices(config, devices)
