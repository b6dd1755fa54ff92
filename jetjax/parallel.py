"""Data parallelism over every device JAX sees: a 1-D mesh ('data'), batches sharded along it, state
replicated. Gradients of a loss over the global batch are reduced by the compiler; BatchNorm statistics and
contrastive similarities are taken over the global batch (docs/jax_notes.md).

Several processes (hosts): `initialize_distributed()` joins the run; every process builds the same global
batch from the same seeded stream and places only its rows (`host_share`), so N processes compute exactly
the batches of one process with the same global batch. Results that are sharded over the processes come back
whole on every process (`fetch_global`, `gather_hosts`); files are written by process 0 (`is_main_process`).
"""
import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
"""Environment of a launch by hand (jetjax.launch, or one command per node): the coordinator's host:port
(process 0's machine), the number of processes and this one's index. JAX reads the address itself; jetjax
reads the other two. Under SLURM none is needed: JAX derives all three from SLURM_* variables."""


def initialize_distributed():
    """Join a multi-process run when launched as one (no-op for a single process). A process that stops
    sending heartbeats for JAX_HEARTBEAT_TIMEOUT_SECONDS (default 100) ends the others with an error.

    On the CPU the persistent compilation cache is turned off for the run: process 0 would load a program from
    it while the others compile theirs, and jax 0.12.1's CPU collectives hang between such a loaded and a fresh
    program (docs/jax_notes.md, "Several CPU processes and the persistent cache")."""
    explicit = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not explicit and os.environ.get("SLURM_NTASKS", "1") == "1":
        return
    timeout = int(os.environ.get("JAX_HEARTBEAT_TIMEOUT_SECONDS", 100))
    if explicit:
        missing = [name for name in DISTRIBUTED_ENV[1:] if name not in os.environ]
        if missing:
            raise ValueError(f"JAX_COORDINATOR_ADDRESS={explicit} is set but {' and '.join(missing)} not: set all "
                             f"of {', '.join(DISTRIBUTED_ENV)} on every process "
                             "(or launch with python -m jetjax.launch)")
        jax.distributed.initialize(explicit, num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                                   process_id=int(os.environ["JAX_PROCESS_ID"]), heartbeat_timeout_seconds=timeout)
    else:  # SLURM: JAX reads the coordinator, count and index from the job's variables
        jax.distributed.initialize(heartbeat_timeout_seconds=timeout)
    if jax.default_backend() == "cpu":
        jax.config.update("jax_enable_compilation_cache", False)


def is_main_process():
    return jax.process_index() == 0


def data_mesh():
    """1-D mesh over all devices with an Auto axis (Explicit axes break flax.linen.Dropout)."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh):
    return NamedSharding(mesh, PartitionSpec("data"))


def replicated(mesh):
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(global_batch, mesh, key="train.batch_size"):
    """The global batch must split evenly over the devices (config key `key`)."""
    if global_batch % mesh.size:
        raise ValueError(f"{key}={global_batch} is not divisible by the {mesh.size} devices; "
                         f"use a multiple of {mesh.size}")


def host_share(batch):
    """This process's rows of a global host batch (a dict of numpy arrays of equal length, divisible by the
    number of processes): the consecutive block that `shard_batch` places on its devices."""
    count = jax.process_count()
    if count == 1:
        return batch
    size = len(next(iter(batch.values()))) // count
    first = jax.process_index() * size
    return {k: v[first:first + size] for k, v in batch.items()}


def shard_batch(batch, mesh):
    """Place this host's numpy batch (a dict of arrays) on the devices, split along the batch axis."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def needs_step_sync(mesh):
    """Whether the host must wait for each step: several CPU devices on a small machine can deadlock in
    XLA's CPU all-reduce when steps queue up (docs/jax_notes.md); everywhere else steps run asynchronously."""
    return mesh.size > 1 and mesh.devices.flat[0].platform == "cpu"


def gather_hosts(values):
    """This host's per-jet `values` (numpy (B_host, ...)) -> those of the global batch, host by host (the
    order of the global batch); the values themselves on a single host."""
    if jax.process_count() == 1:
        return values
    from jax.experimental import multihost_utils

    values = np.asarray(values)
    return np.asarray(multihost_utils.process_allgather(values)).reshape((-1,) + values.shape[1:])


def fetch_global(tree):
    """A pytree of device arrays (sharded over the processes or replicated) as numpy arrays of their global
    values, on every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def any_process(flag):
    """Whether `flag` is true on some process (all processes must call it at the same point)."""
    return bool(gather_hosts(np.array([flag])).any())


def replicate(tree, mesh):
    """`tree` (arrays of equal value on every process: same seed or same checkpoint) replicated over `mesh`.
    Several processes cannot `device_put` onto devices of others: each builds the global array from its
    own copy (PRNG keys through their raw data)."""
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def place(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(place(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(place, tree)
