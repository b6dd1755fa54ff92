"""jetjax.compilation: CompileLog counts the XLA programs compiled while it is open, per function; the persistent
cache serves a rerun."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp

from jetjax.compilation import CompileLog


def test_one_program_per_new_shape_and_none_after_closing():
    @jax.jit
    def double_sum(x):
        return jnp.sum(x * 2)

    x3, x4, x5 = jnp.ones(3), jnp.ones(4), jnp.ones(5)  # created outside: their own programs are not counted
    with CompileLog() as log:
        for x in (x3, x3, x4):  # the second call with shape (3,) reuses the first program
            double_sum(x).block_until_ready()
    double_sum(x5).block_until_ready()  # after closing: not counted
    assert log.programs["jit(double_sum)"] == 2 and log.seconds["jit(double_sum)"] > 0
    summary = log.summary()
    assert summary["compiled_programs"] == sum(log.programs.values()) >= 2
    assert summary["programs jit(double_sum)"] == 2


RUN = """
import sys, jax, jax.numpy as jnp, ml_collections
from jetjax import compilation
config = ml_collections.ConfigDict({"compile": {"cache": sys.argv[2] == "on", "cache_dir": sys.argv[1]}})
compilation.use_persistent_cache(config)
with compilation.CompileLog() as log:
    jax.jit(lambda x: jnp.tanh(x) @ x)(jnp.ones((8, 8))).block_until_ready()
print(log.summary()["cache_hits"], log.programs["jit(<lambda>)"])
"""


def run_twice(folder, cache, jax_folder=None):
    """The RUN script twice with compile.cache on or off, JAX_COMPILATION_CACHE_DIR=`jax_folder` (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    if jax_folder:
        env["JAX_COMPILATION_CACHE_DIR"] = str(jax_folder)
    return [subprocess.run([sys.executable, "-c", RUN, str(folder), cache], env=env, capture_output=True, text=True,
                           check=True).stdout.split() for _ in range(2)]


def test_a_rerun_loads_its_programs_from_the_persistent_cache(tmp_path):
    (first_hits, first_programs), (second_hits, second_programs) = run_twice(tmp_path / "xla", "on")
    assert first_hits == "0" and int(second_hits) >= 1 and first_programs == second_programs == "1"
    assert any((tmp_path / "xla").iterdir())
    (hits, _), (hits_again, _) = run_twice(tmp_path / "off", "off")  # compile.cache=False: no folder, no hits
    assert hits == hits_again == "0" and not (tmp_path / "off").exists()
    (hits, _), (hits_again, _) = run_twice(tmp_path / "off", "off", jax_folder=tmp_path / "env")  # also not jax's
    assert hits == hits_again == "0" and not (tmp_path / "env").exists()
