"""Orbax checkpoints of a run: the latest state and the best one, each with a JSON record (epoch, data
stream position, selection metric). All orbax calls of the project live here."""
import traceback
from pathlib import Path

import jax
import orbax.checkpoint as ocp


def manager_options(name, keep=1):
    """`keep` checkpoints kept; the manager's own prefix for orbax's cross-process barriers: both managers save
    asynchronously at the same step (an epoch that improves), and barrier names are otherwise made of the
    step alone, so with several processes the second save found the first's barrier "already ongoing"."""
    barriers = ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=f"jetjax_{name}")
    return ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, multiprocessing_options=barriers)


class Checkpoints:
    """`workdir/checkpoints/{latest,best}`: the last `keep_latest` latest checkpoints (config
    train.keep_checkpoints), one best. A checkpoint that cannot be read is named in one line (its traceback goes
    to `workdir/checkpoint_errors.log`), moved to `checkpoints/damaged/<which>_<step>` (kept, out of the way of
    the run's next saves) and the one before it is restored instead."""

    def __init__(self, workdir, keep_latest=1):
        self.workdir = Path(workdir).absolute()
        root = self.workdir / "checkpoints"
        self.managers = {name: ocp.CheckpointManager(root / name, options=manager_options(
            name, keep_latest if name == "latest" else 1)) for name in ("latest", "best")}

    def save(self, which, step, state, record):
        """Save `state` (a pytree) and `record` (JSON-serialisable dict) as checkpoint `which` at `step`, replacing
        one saved at that step before (a run resumed from an earlier checkpoint redoes its steps)."""
        if int(step) in self.managers[which].all_steps():
            self.managers[which].delete(int(step))
        self.managers[which].save(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)), force=True)

    def latest_step(self, which):
        return self.managers[which].latest_step()

    def restore(self, which, target=None):
        """(state, record) of checkpoint `which`, restored onto the shapes and shardings of `target`
        (a state or `jax.eval_shape` of one), or as saved (nested dicts of arrays) without a target;
        None if there is none."""
        manager = self.managers[which]
        abstract = None if target is None else jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        tried = []
        for step in sorted(manager.all_steps(), reverse=True):
            try:
                restored = manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), record=ocp.args.JsonRestore()))
            except Exception as error:  # any damage: named, logged whole, set aside, the step before tried
                tried.append(self.damaged(which, step, error))
                manager.reload()  # the damaged step is gone from its folder
                continue
            if tried:
                print(f"checkpoint: restored {which} step {step} instead (its record: epoch "
                      f"{restored['record'].get('epoch')}, batch {restored['record'].get('batch')})")
            return restored["state"], restored["record"]
        if tried:
            raise RuntimeError(f"no {which} checkpoint of {self.workdir} could be restored: {'; '.join(tried)}; "
                               f"details in {self.workdir / 'checkpoint_errors.log'}")
        return None

    def damaged(self, which, step, error):
        """One line on the checkpoint `which` at `step` that failed to restore (printed and returned); the
        whole traceback appended to workdir/checkpoint_errors.log."""
        folder = self.workdir / "checkpoints" / which / str(step)
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        with open(self.workdir / "checkpoint_errors.log", "a") as log:
            log.write(f"{folder}:\n{''.join(traceback.format_exception(error))}\n")
        aside = self.workdir / "checkpoints" / "damaged" / f"{which}_{step}"
        if jax.process_index() == 0:
            aside.parent.mkdir(exist_ok=True)
            folder.rename(aside)
        line = f"{folder} could not be restored ({type(error).__name__}: {reason}); moved to {aside}"
        print(f"checkpoint: {line}")
        return line

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
