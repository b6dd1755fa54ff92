"""jetjax.compilation.CompileLog counts the XLA programs compiled while it is open, per function."""
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
