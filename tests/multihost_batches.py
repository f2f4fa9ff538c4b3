"""Run as 2 processes by tests/test_multihost.py: each host builds only its rows of every global
batch, and the global batch assembled from the hosts' rows equals the whole batch one process builds."""

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec
from transformers import AutoTokenizer

import dss.data
import dss.hub
import dss.models
from dss import cli, distributed, sharding, templating


def main(config, workdir):
    distributed.initialize(config)
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    tokenizer = AutoTokenizer.from_pretrained(dss.hub.resolve_path(config.model.path))
    encoded, _, _ = dss.data.build_dataset(config.data, tokenizer, templating.run_template_vars(config.template, workdir))
    size = config.train.global_batch
    batches = dss.data.StepBatcher(encoded, None, size, seed=config.seed, length=512)
    batch_sharding = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    rows = sharding.host_rows(batch_sharding, size)
    assert len(rows) == size // jax.process_count(), rows
    for step in range(3):
        local = batches.batch(step, rows)
        whole = batches.batch(step)
        for key, value in local.items():
            assert value.shape[0] == len(rows)
            assembled = multihost_utils.process_allgather(sharding.rows_to_global(value, rows, size, batch_sharding),
                                                         tiled=True)
            np.testing.assert_array_equal(np.asarray(assembled), whole[key])
    print(f"process {jax.process_index()}: built rows {rows} of {size}; assembled batches equal the whole batches")


if __name__ == "__main__":
    cli.launch("multihost_batches")  # this file, imported by name (the script's directory is on sys.path)
