"""Data parallelism over every device JAX sees: a 1-D mesh ('data'), batches sharded along it, state
replicated. Gradients of a loss over the global batch are reduced by the compiler; BatchNorm statistics and
contrastive similarities are taken over the global batch (API_NOTES.md).

Several hosts: `initialize_distributed()` calls `jax.distributed.initialize()` when the environment asks
for it (JAX_COORDINATOR_ADDRESS, or a cluster JAX detects itself, e.g. SLURM or TPU pods); each host then
feeds its share of the global batch.
"""
import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec


def initialize_distributed():
    """Join a multi-host run when launched as one (no-op on a single host)."""
    if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("SLURM_NTASKS", "1") != "1":
        jax.distributed.initialize()


def data_mesh():
    """1-D mesh over all devices with an Auto axis (Explicit axes break flax.linen.Dropout)."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh):
    return NamedSharding(mesh, PartitionSpec("data"))


def replicated(mesh):
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(global_batch, mesh):
    """The global batch must split evenly over the devices (config key 'train.batch_size')."""
    if global_batch % mesh.size:
        raise ValueError(f"train.batch_size={global_batch} is not divisible by the {mesh.size} devices; "
                         f"use a multiple of {mesh.size}")


def shard_batch(batch, mesh):
    """Place this host's numpy batch (a dict of arrays) on the devices, split along the batch axis."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def needs_step_sync(mesh):
    """Whether the host must wait for each step: several CPU devices on a small machine can deadlock in
    XLA's CPU all-reduce when steps queue up (API_NOTES.md); everywhere else steps run asynchronously."""
    return mesh.size > 1 and mesh.devices.flat[0].platform == "cpu"


def gather_hosts(values):
    """This host's per-jet `values` (numpy (B_host,)) -> those of the global batch, host by host (the order
    of the global batch); the values themselves on a single host."""
    if jax.process_count() == 1:
        return values
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(values)).reshape(-1)


def replicate(tree, mesh):
    return jax.device_put(tree, replicated(mesh))
