"""A run that meets its own past, through the command line: a rerun with settings the workdir's state cannot
take is refused in one line naming each key; a damaged latest checkpoint falls back to the one before; every
size and count is checked by its own key. A run killed with -9 resumes from its last checkpoint. (A killed process of a 2-process run:
tests/test_distributed.py; SIGTERM then a bit-identical resume: tests/test_train.py.)"""
import json
import shutil
import subprocess
import sys

import pytest

from configs import quickstart
from jetjax import build, checks
from jetjax.checkpoint import Checkpoints
from tests.test_train import ROOT, TINY_OVERRIDES

STEPS_PER_EPOCH = 1280 // 64


def run(workdir, *extra):
    """The command line of the tiny run, `extra` overrides replacing those of the same keys."""
    keys = {arg.split("=")[0] for arg in extra}
    overrides = [arg for arg in TINY_OVERRIDES if arg.split("=")[0] not in keys]  # a repeated tuple key appends
    return subprocess.run([sys.executable, "-m", "jetjax.main", "--config", "configs/quickstart.py",
                           f"--workdir={workdir}", *overrides, *extra], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-epoch run (TINY_OVERRIDES): two latest checkpoints, at steps 20 and 40."""
    workdir = tmp_path_factory.mktemp("faults") / "run"
    done = run(workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir


def copy_of(run_dir, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    return target


def test_a_run_killed_with_sigkill_resumes_from_its_last_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    keys = {arg.split("=")[0] for arg in ("--config.train.epochs",)}
    process = subprocess.Popen([sys.executable, "-m", "jetjax.main", "--config", "configs/quickstart.py",
                                f"--workdir={workdir}", *[a for a in TINY_OVERRIDES if a.split("=")[0] not in keys],
                                "--config.train.epochs=3"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True,
                               env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    for line in process.stdout:  # epoch 1's checkpoint is complete, epoch 2's is being written: kill it there
        if line.startswith("epoch 2:"):
            process.kill()
            break
    assert process.wait(timeout=120) == -9
    done = run(workdir, "--config.train.epochs=3")
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = [f"resuming {workdir} at epoch {e} batch 0 (step {e * STEPS_PER_EPOCH})" in done.stdout for e in (1, 2)]
    assert any(resumed), done.stdout[-2000:]
    stored = Checkpoints(workdir, keep_latest=2)
    assert stored.latest_step("latest") == 3 * STEPS_PER_EPOCH
    stored.close()


def test_a_rerun_with_another_model_is_refused_naming_the_key(finished, tmp_path):
    workdir = copy_of(finished, tmp_path)
    done = run(workdir, "--config.model.embed_dims=(48,96,48)")
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "model.embed_dims: stored [16, 32, 16], now [48, 96, 48]" in last and "--workdir" in last, last
    assert json.loads((workdir / "config.json").read_text())["model"]["embed_dims"] == [16, 32, 16]  # untouched


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(finished, tmp_path):
    workdir = copy_of(finished, tmp_path)
    stored = Checkpoints(workdir, keep_latest=2)
    steps = sorted(stored.managers["latest"].all_steps())
    stored.close()
    assert steps == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    state = workdir / "checkpoints" / "latest" / str(steps[-1]) / "state"
    largest = max((p for p in state.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[:largest.stat().st_size // 2])
    done = run(workdir, "--config.train.epochs=3", "--config.data.val_size=1024")  # allowed changes, said once
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming with changed settings: data.val_size: 256 -> 1024; train.epochs: 2 -> 3" in done.stdout
    # 1024 validation jets need more qcd jets than the val split's 150: said once, though validated twice
    assert done.stdout.count("the validation sample needed a second pass over its files") == 1
    lines = [line for line in done.stdout.splitlines() if line.startswith("checkpoint:")]
    assert len(lines) == 2 and f"latest/{steps[-1]} could not be restored" in lines[0]
    assert f"restored latest step {steps[0]} instead (its record: epoch 1, batch 0)" in lines[1]
    assert f"resuming {workdir} at epoch 1 batch 0 (step {steps[0]})" in done.stdout
    assert (workdir / "checkpoint_errors.log").read_text().count("Traceback") == 1
    stored = Checkpoints(workdir, keep_latest=2)
    assert stored.latest_step("latest") == 3 * STEPS_PER_EPOCH
    stored.close()


def test_a_negative_batch_size_is_reported_by_its_own_key(tmp_path):
    done = run(tmp_path / "run", "--config.train.batch_size=-4")
    assert done.returncode != 0
    assert "config.train.batch_size=-4: give a whole number >= 1" in done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("key", sorted(checks.COUNTS))
@pytest.mark.parametrize("offset", [1, 2], ids=["below", "further below"])
def test_every_count_names_its_own_key(key, offset):
    config = quickstart.get_config()
    minimum = checks.COUNTS[key]
    section, name = key.split(".")
    config[section][name] = minimum - offset
    with pytest.raises(ValueError, match=f"config.{key}={minimum - offset}: give a whole number >= {minimum}"):
        build.build_model(config)


def test_an_epoch_smaller_than_a_batch_names_both_keys():
    config = quickstart.get_config()
    config.data.epoch_size = 64
    with pytest.raises(ValueError, match="config.data.epoch_size=64 is smaller than config.train.batch_size=128"):
        build.build_model(config)


def test_keys_the_state_does_not_depend_on_may_change(tmp_path):
    config = quickstart.get_config()
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.json").write_text(config.to_json_best_effort())
    config.train.epochs, config.data.root = 9, "elsewhere"
    assert checks.compare_with_workdir(config, tmp_path) == ["data.root: None -> 'elsewhere'", "train.epochs: 3 -> 9"]
    for key, value in (("seed", 1), ("data.num_particles", 64), ("optimizer.name", "muon")):
        changed = quickstart.get_config()
        section, _, name = key.rpartition(".")
        (changed[section] if section else changed)[name] = value
        with pytest.raises(ValueError, match=key.replace(".", r"\.") + ": stored"):
            checks.compare_with_workdir(changed, tmp_path)


def test_a_run_saved_before_pair_mass_existed_keeps_the_reference_one(tmp_path):
    config = quickstart.get_config()
    stored = json.loads(config.to_json_best_effort())
    del stored["model"]["pair_mass"]  # a run saved before the key existed computed the reference pair mass
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.json").write_text(json.dumps(stored))
    assert config.model.pair_mass == "stable"  # today's default
    with pytest.raises(ValueError, match="model.pair_mass: stored 'reference', now 'stable'"):
        checks.compare_with_workdir(config, tmp_path)
    with pytest.raises(ValueError, match="--config.model.pair_mass=reference"):
        checks.check_same_pair_mass(config, tmp_path)
    config.model.pair_mass = "reference"
    assert checks.compare_with_workdir(config, tmp_path) == []
    checks.check_same_pair_mass(config, tmp_path)


def test_a_stored_config_is_replaced_whole_under_a_reader(tmp_path):
    # in a multi-process run the main process stores config.json while the others read it (compare_with_workdir;
    # a truncating write once let a process read an empty file, tests/test_distributed.py): a reader that opened
    # the old file keeps reading all of it, and the new file is complete, with no temporary left
    config = quickstart.get_config()
    checks.store_config(config, tmp_path)
    old = (tmp_path / "config.json").read_text()
    with open(tmp_path / "config.json") as reader:
        config.train.epochs = 9
        checks.store_config(config, tmp_path)
        assert reader.read() == old
    assert json.loads((tmp_path / "config.json").read_text())["train"]["epochs"] == 9
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
