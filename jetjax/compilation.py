"""What a run compiles: the XLA programs built while a `CompileLog` is open and the seconds XLA spent on each,
counted from jax's monitoring events (every backend compilation, whichever thread triggers it). On an
accelerator a program can take a minute to compile, so a run whose program count grows with its data is a
bug (../shared/GPU_NOTES.md); the engine logs these counts with every validation record."""
import collections

import jax

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileLog:
    """Counts XLA compilations while open: `programs` and `seconds` per jitted function name (e.g.
    'jit(train_step)'; small op-by-op programs count too)."""

    def __init__(self):
        self.programs, self.seconds = collections.Counter(), collections.Counter()

    def record(self, event, seconds, **kwargs):
        if event == BACKEND_COMPILE_EVENT:
            name = kwargs.get("fun_name", "unnamed")
            self.programs[name] += 1
            self.seconds[name] += seconds

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self.record)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self.record)

    def summary(self):
        """{'compiled_programs': n, 'compile_s': seconds} over every function, plus the program count of each
        function that compiled more than one program or took over a second."""
        counts = {f"programs {name}": n for name, n in sorted(self.programs.items())
                  if n > 1 or self.seconds[name] > 1}
        return {"compiled_programs": sum(self.programs.values()),
                "compile_s": round(sum(self.seconds.values()), 2), **counts}
