"""Keep freed memory in the process on Linux (glibc), so that XLA's CPU buffers are not page-faulted anew
on every step.

XLA's CPU runtime allocates each execution's temporary buffer (1.5-2 GB for a reference-ParT training step
at batch 64) with malloc from its worker threads; glibc serves such sizes with a fresh mmap and returns them
with munmap, so every step faults in and zeroes every page again: 443,000 page faults and 0.8 s of kernel
time per step on the 2-core development CPU, a third of the step. With one malloc arena, no mmap and no
trimming, freed buffers are reused: 0 faults per step, the training step 1.4-1.9x faster (measured).

The prices: memory the process has freed stays with it (its peak resident size, ~5 GB for that step, is not
given back until it exits), and XLA compiles about a third slower (one arena for its compiler threads),
which is what tiny, compile-bound runs notice. So it applies only where jax will compute on the CPU
(`cpu_backend_expected`): on a GPU or TPU host XLA's buffers live in device memory and the host mostly
compiles, with many threads, for which one arena is no help (not measured on a GPU yet). Set
JETJAX_KEEP_FREED_MEMORY=0 to leave malloc as it is everywhere, =1 to apply it everywhere.

The engine applies it where a run starts, before jax starts its backend threads (the command line, jetjax/main.py;
`train.fit` and `probe.fit` for notebooks); `import jetjax` changes nothing, so importing a loss function
leaves the process's malloc alone.
"""
import ctypes
import functools
import importlib.util
import os
import sys

from jetjax.devices import system_accelerators

JAX_PLUGINS = {"gpu": ("jax_cuda12_plugin", "jax_cuda13_plugin"), "tpu": ("libtpu",)}
"""The packages that give jax each accelerator backend (the cuda12 / cuda13 / tpu extras install them)."""


def cpu_backend_expected(platforms=None, accelerators=None):
    """Whether jax will compute on the CPU, decided before jax is imported: JAX_PLATFORMS (`platforms`) names
    the CPU first, or no accelerator the system shows (`accelerators`, devices.system_accelerators) has its
    jax plugin installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "") if platforms is None else platforms
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    accelerators = system_accelerators() if accelerators is None else accelerators
    return not any(importlib.util.find_spec(plugin) for name in accelerators for plugin in JAX_PLUGINS[name])

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's mallopt parameters (malloc.h)


@functools.cache
def keep_freed_memory():
    """One malloc arena, no mmap-served allocations, no trimming (mallopt); True when glibc accepted all
    three, False where it does not apply (not Linux/glibc, JETJAX_KEEP_FREED_MEMORY=0, or, unless that is 1,
    a run that will compute on a GPU or TPU). Applied once per process: later calls return the first answer."""
    setting = os.environ.get("JETJAX_KEEP_FREED_MEMORY", "")
    if setting == "0" or not sys.platform.startswith("linux") or (setting != "1" and not cpu_backend_expected()):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries
        return False
    return all(mallopt(option, value) == 1 for option, value in
               ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))
