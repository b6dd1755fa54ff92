"""jetjax.memory: applied first thing in a process, XLA's CPU buffers are reused instead of page-faulted on every
call; applied after numpy has started a thread it is refused; `import jetjax` alone leaves malloc as it is; the
command line applies it before anything else."""
import os
import subprocess
import sys

import jax
import pytest

SCRIPT = """
import resource, sys
if sys.argv[1] == "first":
    from jetjax import memory
    kept = memory.keep_freed_memory()
import numpy, jax, jax.numpy as jnp
import jetjax, jetjax.losses
from jetjax import memory
if sys.argv[1] == "late":
    kept = memory.keep_freed_memory()
if sys.argv[1] == "import":  # whether importing jetjax called it
    kept = memory.keep_freed_memory.cache_info().currsize > 0
y, w = jnp.ones((2048, 2048)), jnp.ones((2048, 8))
# temporaries of 64 MB (above glibc's largest mmap threshold) and a scalar result, like a training step
f = jax.jit(lambda y: jnp.sum(jnp.tanh(jnp.concatenate([y, y, y, y])) @ w))
faulted = 0
for call in range(30):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    jax.block_until_ready(f(y))
    # after 10 calls kept memory has settled (the heap grows while the worker threads' allocations interleave)
    faulted += call >= 10 and resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before > 10_000
print(kept, faulted)
"""


def needs_glibc_cpu(test):
    test = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")(test)
    return pytest.mark.skipif(jax.default_backend() != "cpu", reason="page faults of XLA's CPU runtime: on "
                              f"{jax.default_backend()} the arrays live in device memory")(test)


def faulted_calls(when, keep=True):
    """(whether the setting was applied, how many of 20 calls page-faulted a whole 64 MB temporary) in a fresh
    process; `when`: 'first' (before numpy), 'late' (after numpy and jax), 'import' (never called)."""
    env = {**os.environ, "JETJAX_KEEP_FREED_MEMORY": "1" if keep else "0"}
    out = subprocess.run([sys.executable, "-c", SCRIPT, when], env=env, capture_output=True, text=True, check=True)
    kept, faulted = out.stdout.split()
    return kept == "True", int(faulted)


@needs_glibc_cpu
def test_freed_buffers_are_reused_when_kept_first():
    kept, faulted = faulted_calls("first")
    default_kept, default_faulted = faulted_calls("first", keep=False)
    assert kept and not default_kept
    assert default_faulted >= 18  # a fresh mmap for every call's temporary
    # kept first: XLA's worker threads all allocate in the main arena, so the heap serves the calls; it still grows
    # now and then while allocations interleave (0-3 of 20 calls faulted in 9 runs)
    assert faulted <= 5


@needs_glibc_cpu
def test_applied_late_it_is_refused():
    kept, faulted = faulted_calls("late")  # numpy and jax imported: their threads may have fixed the arenas
    assert not kept and faulted >= 18


@needs_glibc_cpu
def test_importing_jetjax_leaves_malloc_alone():
    kept, faulted = faulted_calls("import")  # even where the setting is asked for (JETJAX_KEEP_FREED_MEMORY=1)
    assert not kept and faulted >= 18


@needs_glibc_cpu
def test_the_command_line_applies_it_before_any_import():
    """`python -m jetjax.main` keeps freed memory (with no --config it stops at the flag check, after its
    imports): applied before numpy started a thread, else keep_freed_memory would have refused."""
    script = ("import runpy, sys\nsys.argv = ['jetjax.main']\ntry:\n    runpy.run_module('jetjax.main', "
              "run_name='__main__')\nexcept SystemExit:\n    pass\nfrom jetjax import memory\n"
              "print(memory.other_threads() > 0, memory.keep_freed_memory())")
    env = {**os.environ, "JETJAX_KEEP_FREED_MEMORY": "1"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-2:] == ["True", "True"], out.stdout + out.stderr


def test_a_run_without_it_says_how_to_have_it(monkeypatch, capsys):
    from jetjax import memory

    monkeypatch.setattr(memory, "wanted", lambda: True)
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: False)
    memory.advise.cache_clear()
    memory.advise()
    memory.advise()  # once per process
    said = capsys.readouterr().out
    assert said.count("page-faulted") == 1 and memory.TUNABLES in said
    monkeypatch.setenv("GLIBC_TUNABLES", memory.TUNABLES)
    memory.advise.cache_clear()
    memory.advise()
    assert capsys.readouterr().out == ""
    memory.advise.cache_clear()


def test_the_setting_applies_only_where_jax_computes_on_the_cpu(monkeypatch):
    from jetjax import memory

    assert memory.cpu_backend_expected(platforms="cpu") and not memory.cpu_backend_expected(platforms="cuda,cpu")
    assert memory.cpu_backend_expected(platforms="", accelerators=set())  # a CPU-only machine
    present = {"jax_cuda12_plugin"}
    monkeypatch.setattr(memory.importlib.util, "find_spec", lambda name: name in present or None)
    assert not memory.cpu_backend_expected(platforms="", accelerators={"gpu"})  # a GPU with jax's CUDA plugin
    present.clear()
    assert memory.cpu_backend_expected(platforms="", accelerators={"gpu"})  # a GPU but CPU-only jax
