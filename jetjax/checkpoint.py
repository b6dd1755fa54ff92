"""Orbax checkpoints of a run: the latest state and the best one, each with a JSON record (epoch, data
stream position, selection metric). All orbax calls of the project live here."""
from pathlib import Path

import jax
import orbax.checkpoint as ocp


def manager_options(name):
    """One checkpoint kept; the manager's own prefix for orbax's cross-process barriers: both managers save
    asynchronously at the same step (an epoch that improves), and barrier names are otherwise made of the
    step alone, so with several processes the second save found the first's barrier "already ongoing"."""
    barriers = ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=f"jetjax_{name}")
    return ocp.CheckpointManagerOptions(max_to_keep=1, create=True, multiprocessing_options=barriers)


class Checkpoints:
    """`workdir/checkpoints/{latest,best}`, one checkpoint kept in each."""

    def __init__(self, workdir):
        root = Path(workdir).absolute() / "checkpoints"
        self.managers = {name: ocp.CheckpointManager(root / name, options=manager_options(name))
                         for name in ("latest", "best")}

    def save(self, which, step, state, record):
        """Save `state` (a pytree) and `record` (JSON-serialisable dict) as checkpoint `which` at `step`."""
        self.managers[which].save(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)), force=True)

    def latest_step(self, which):
        return self.managers[which].latest_step()

    def restore(self, which, target=None):
        """(state, record) of checkpoint `which`, restored onto the shapes and shardings of `target`
        (a state or `jax.eval_shape` of one), or as saved (nested dicts of arrays) without a target;
        None if there is none."""
        manager = self.managers[which]
        step = manager.latest_step()
        if step is None:
            return None
        abstract = None if target is None else jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), record=ocp.args.JsonRestore()))
        return restored["state"], restored["record"]

    def record(self, which):
        """The JSON record of checkpoint `which` alone (no arrays are read); None if there is none."""
        manager = self.managers[which]
        step = manager.latest_step()
        if step is None:
            return None
        return manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))["record"]

    def wait(self):
        for manager in self.managers.values():
            manager.wait_until_finished()

    def close(self):
        for manager in self.managers.values():
            manager.close()


def stored_record(run, which):
    """The JSON record of checkpoint `which` of the workdir `run` (no arrays are read); None if there is none."""
    stored = Checkpoints(run)
    record = stored.record(which)
    stored.close()
    return record


def best_checkpoint(run, key):
    """The best state saved in the workdir `run` (nested dicts of arrays); errors name the config `key`."""
    if not (Path(run) / "config.json").exists():
        raise FileNotFoundError(f"{key}={str(run)!r} holds no config.json: is it a jetjax workdir?")
    stored = Checkpoints(run)
    best = stored.restore("best")
    stored.close()
    if best is None:
        raise FileNotFoundError(f"{key}={str(run)!r} has no best checkpoint yet (checkpoints/best): train it first")
    return best[0]
