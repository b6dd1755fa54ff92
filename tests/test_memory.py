"""jetjax.memory: once the engine applies it, XLA's CPU buffers are reused instead of page-faulted on every call;
`import jetjax` alone leaves malloc as it is."""
import os
import subprocess
import sys

import jax
import pytest

SCRIPT = """
import resource, sys
import jetjax, jetjax.losses
from jetjax import memory
kept = memory.keep_freed_memory() if sys.argv[1] == "apply" else False
import jax, jax.numpy as jnp
y = jnp.ones((2048, 2048))
# temporaries of 64 MB (above glibc's largest mmap threshold) and a scalar result, like a training step
f = jax.jit(lambda y: jnp.sum(jnp.tanh(jnp.concatenate([y, y, y, y]) @ y) * 2))
faults = []
for _ in range(15):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    jax.block_until_ready(f(y))
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(kept, sorted(faults)[len(faults) // 2])
"""


def median_faults_per_call(keep, apply=True):
    """Median page faults of 15 calls: with kept memory the heap grows over the first few calls (the worker
    threads' allocations interleave differently) and then serves every call from what is already mapped.
    `apply`: the script calls memory.keep_freed_memory() as the engine does (else it only imports jetjax)."""
    env = {**os.environ, "JETJAX_KEEP_FREED_MEMORY": "1" if keep else "0"}
    out = subprocess.run([sys.executable, "-c", SCRIPT, "apply" if apply else "import"], env=env, capture_output=True, text=True, check=True)
    kept, faults = out.stdout.split()
    return kept == "True", float(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="page faults of XLA's CPU runtime: on "
                    f"{jax.default_backend()} the arrays live in device memory")
def test_freed_buffers_are_reused_not_faulted_again():
    kept, faults = median_faults_per_call(keep=True)
    default_kept, default_faults = median_faults_per_call(keep=False)
    assert kept and not default_kept
    # fresh 64 MB temporaries are 16,384 pages a call; kept memory is reused
    assert default_faults > 10_000
    assert faults < 1_000


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="page faults of XLA's CPU runtime: on "
                    f"{jax.default_backend()} the arrays live in device memory")
def test_importing_jetjax_leaves_malloc_alone():
    kept, faults = median_faults_per_call(keep=True, apply=False)  # even where the setting is asked for
    assert not kept and faults > 10_000


def test_the_setting_applies_only_where_jax_computes_on_the_cpu(monkeypatch):
    from jetjax import memory

    assert memory.cpu_backend_expected(platforms="cpu") and not memory.cpu_backend_expected(platforms="cuda,cpu")
    assert memory.cpu_backend_expected(platforms="", accelerators=set())  # a CPU-only machine
    present = {"jax_cuda12_plugin"}
    monkeypatch.setattr(memory.importlib.util, "find_spec", lambda name: name in present or None)
    assert not memory.cpu_backend_expected(platforms="", accelerators={"gpu"})  # a GPU with jax's CUDA plugin
    present.clear()
    assert memory.cpu_backend_expected(platforms="", accelerators={"gpu"})  # a GPU but CPU-only jax
