"""Keep freed memory in the process on Linux (glibc), so that XLA's CPU buffers are not page-faulted anew
on every step.

XLA's CPU runtime allocates each execution's temporary buffer (2.0 GiB for a reference-ParT training step at
batch 64, 4.4 GiB for its largest layout) with malloc from its worker threads; glibc serves such sizes with a
fresh mmap and returns them with munmap, so every step faults in and zeroes every page again. With one malloc
arena, no mmap and no trimming, freed buffers are reused: 0 faults per step.

The setting works only when applied before the process runs a second thread: glibc fixes how many arenas it
may create when another thread first allocates (numpy starts such a thread at `import numpy`), and in any
arena but the main one a buffer above 64 MB is always mmapped. Applied after `import numpy` / `import jax`,
XLA's worker threads get arenas of their own, and the steps those threads run are faulted as before. Measured
on the 2-core development CPU (reference ParT, batch 64, P = 128, 8 training steps per pass): applied after the
imports, passes alternated between 0.8 and 1.4 s per step with 1.5-2.7 million page faults each (33-56
jets/s); applied first, 0 faults and 62-70 jets/s in every one of 30 passes. So `keep_freed_memory` refuses
(returns False) once another thread runs. The command line applies it first thing (jetjax/main.py), as do the
benchmarks in experiments/; in a notebook or script, call `jetjax.memory.keep_freed_memory()` before
importing numpy or jax, or start Python with `GLIBC_TUNABLES` set to `TUNABLES` (`train.fit` and `probe.fit`
say so, once, when a run on the CPU goes without). `import jetjax` changes nothing.

The prices: the process keeps what it has freed (peak resident size 15 GB for that training step, its two
programs' temporaries 6.4 GiB and the heap's holes between them; 3.3 GB without the setting), and XLA
compiles slower, mostly because its compiler threads share one arena (the quickstart's training step: 7.1-8.0 s
against 4.0-5.8 s; README, "Benchmarks"), which is what tiny, compile-bound runs notice. So it applies only where jax will compute on the CPU (`cpu_backend_expected`): on a GPU or TPU host
XLA's buffers live in device memory and the host mostly compiles, with many threads, for which one arena is
no help (not measured on a GPU yet). Set JETJAX_KEEP_FREED_MEMORY=0 to leave malloc as it is everywhere, =1
to apply it everywhere.
"""
import ctypes
import functools
import importlib.util
import os
import sys

from jetjax.devices import system_accelerators

JAX_PLUGINS = {"gpu": ("jax_cuda12_plugin", "jax_cuda13_plugin"), "tpu": ("libtpu",)}
"""The packages that give jax each accelerator backend (the cuda12 / cuda13 / tpu extras install them)."""
TUNABLES = "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=18446744073709551615"
"""The same setting as glibc's environment variable GLIBC_TUNABLES, read when a process starts."""


def cpu_backend_expected(platforms=None, accelerators=None):
    """Whether jax will compute on the CPU, decided before jax is imported: JAX_PLATFORMS (`platforms`) names
    the CPU first, or no accelerator the system shows (`accelerators`, devices.system_accelerators) has its
    jax plugin installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "") if platforms is None else platforms
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    accelerators = system_accelerators() if accelerators is None else accelerators
    return not any(importlib.util.find_spec(plugin) for name in accelerators for plugin in JAX_PLUGINS[name])


def wanted():
    """Whether this process should keep freed memory: Linux, and JETJAX_KEEP_FREED_MEMORY=1, or unset and jax
    will compute on the CPU."""
    setting = os.environ.get("JETJAX_KEEP_FREED_MEMORY", "")
    return sys.platform.startswith("linux") and setting != "0" and (setting == "1" or cpu_backend_expected())


def other_threads():
    """How many threads this process runs besides the calling one (Linux)."""
    return len(os.listdir("/proc/self/task")) - 1


_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's mallopt parameters (malloc.h)


@functools.cache
def keep_freed_memory():
    """One malloc arena, no mmap-served allocations, no trimming (mallopt); True when glibc accepted all
    three, False where it does not apply (`wanted`), where it comes too late (another thread already runs:
    module docstring) or where the C library is not glibc. Applied once per process: later calls return the
    first answer."""
    if not wanted() or other_threads():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries
        return False
    return all(mallopt(option, value) == 1 for option, value in
               ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))


@functools.cache
def advise():
    """For a run (train.fit, probe.fit): one line, once per process, when the setting is wanted but not in
    effect (neither applied first thing nor given as GLIBC_TUNABLES), saying how to have it."""
    if not wanted() or keep_freed_memory() or TUNABLES in os.environ.get("GLIBC_TUNABLES", ""):
        return
    print("jetjax: XLA's CPU buffers will be page-faulted anew on every step (the reference ParT's training "
          "step 1.6x slower): call jetjax.memory.keep_freed_memory() before importing numpy or jax, start "
          f"Python with GLIBC_TUNABLES={TUNABLES}, or run `python -m jetjax.main` (jetjax/memory.py)")
