"""Multi-process runs on this machine (2 processes on 127.0.0.1, one CPU device each, started by
jetjax.launch with tests/distributed_worker.py) against one process with the same global batch: training,
validation and evaluation give the same parameters, metrics and per-jet scores (float32 reductions run in
another order: tolerances below); checkpoints move between topologies bit-identically and the data stream
resumes at the batch where it stopped; a killed process ends the run with an error naming it."""
import json
import re
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jetjax import launch, parallel
from jetjax.data import pipeline, synthetic

ROOT = Path(__file__).resolve().parents[1]
WORKER = [sys.executable, str(ROOT / "tests" / "distributed_worker.py")]
STEPS_PER_EPOCH, EPOCHS = 4, 2
LEARNING_RATE = 1e-3
PARAMS_ATOL = 2e-5   # parameters after 8 AdamW steps of lr 1e-3 (updates of ~1e-3 each)
MEAN_ATOL = 1e-3     # BatchNorm running means, in units of the running standard deviation
SCORES_ATOL = 1e-5   # softmax scores of the test jets
SHIFT_INVARIANT = re.compile(r"\['attn'\]\['key'\]\['bias'\]$|\['pair_embed'\]\['(dense_\d+|input_bn)'\]\['bias'\]$"
                             r"|\['pair_embed'\]\['bn_\d+'\]\['mean'\]$")
"""Parameters the loss does not depend on (zero gradient in exact arithmetic): attention key biases (softmax
ignores a constant per query) and the pair MLP's biases before a BatchNorm (which subtracts them), with the
running means that follow them. AdamW turns their float-noise gradients into steps of ~lr in any direction,
so on another topology they may differ by up to steps x lr; the scores do not (checked)."""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from configs import base

    tmp = tmp_path_factory.mktemp("distributed")
    synthetic.write_dataset(tmp / "data", jets_per_group=400, seed=3)
    c = base.get_config()
    c.data.update(dict(root=str(tmp / "data"), num_particles=16, epoch_size=16 * STEPS_PER_EPOCH, val_size=32))
    c.model.update(dict(embed_dims=(16, 16, 16), pair_embed_dims=(8, 8, 8), num_heads=2, num_layers=1,
                        num_cls_layers=1, dropout=0.0, attn_dropout=0.0, activation_dropout=0.0))
    c.optimizer.learning_rate = LEARNING_RATE
    c.train.update(dict(epochs=EPOCHS, batch_size=16, log_every=2))
    c.layout.update(dict(mode="dense", buckets=1))  # one compiled program per step kind
    c.evaluate.embeddings = 20
    (tmp / "config.json").write_text(c.to_json())
    env = {"PYTHONPATH": str(ROOT), "JAX_COMPILATION_CACHE_DIR": str(tmp / "xla"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    return tmp, env


def worker_command(setup, name, workdir, stop_step):
    tmp, _ = setup
    command = WORKER + [str(tmp / "config.json"), str(tmp / (workdir or name)), str(tmp / f"{name}_out")]
    return command + ([] if stop_step is None else [str(stop_step)])


def one_process(setup, name, workdir=None, stop_step=None, timeout=900):
    """The worker alone (no jax.distributed): a plain one-process, one-device run."""
    tmp, env = setup
    subprocess.run(worker_command(setup, name, workdir, stop_step), env={**os.environ, **env}, check=True,
                   timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return tmp / f"{name}_out"


def two_processes(setup, name, workdir=None, stop_step=None, timeout=900):
    tmp, env = setup
    logs = tmp / f"{name}_logs"
    launch.wait(launch.start(worker_command(setup, name, workdir, stop_step), 2, logs, env=env), logs, timeout)
    return tmp / f"{name}_out"


def arrays(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def assert_close(a, b):
    """Parameters and BatchNorm statistics `a` ~ `b` (tolerances above)."""
    assert a.keys() == b.keys()
    for k in a:
        if SHIFT_INVARIANT.search(k):
            np.testing.assert_allclose(a[k], b[k], atol=EPOCHS * STEPS_PER_EPOCH * LEARNING_RATE, rtol=0, err_msg=k)
        elif k.endswith("['mean']"):
            scale = np.sqrt(b[k.replace("['mean']", "['var']")])
            np.testing.assert_allclose(a[k] / scale, b[k] / scale, atol=MEAN_ATOL, rtol=0, err_msg=k)
        else:
            np.testing.assert_allclose(a[k], b[k], atol=PARAMS_ATOL, rtol=1e-4, err_msg=k)


def assert_identical(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def validation_records(workdir):
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r["split"] == "val"]


@pytest.fixture(scope="module")
def reference(setup):
    """The uninterrupted one-process run."""
    return one_process(setup, "one")


@pytest.mark.slow  # 3 runs of 1-2 processes, each compiling: ~1.5 min of CPU
def test_checkpoint_saved_by_two_processes_resumes_in_one(setup, reference):
    tmp, _ = setup
    stop = STEPS_PER_EPOCH + 2  # epoch 2, batch 2: a multiple of log_every, where 2 processes agree to stop
    saved = two_processes(setup, "two_then_one", stop_step=stop)
    resumed = one_process(setup, "resumed_in_one", workdir="two_then_one")
    assert_identical(arrays(saved / "after.npz"), arrays(resumed / "before.npz"))
    assert_close(arrays(resumed / "after.npz"), arrays(reference / "after.npz"))
    # the validation of epoch 1 ran on 2 processes, that of epoch 2 on one
    for ours, theirs in zip(validation_records(tmp / "two_then_one"), validation_records(tmp / "one"), strict=True):
        assert ours["step"] == theirs["step"]
        np.testing.assert_allclose([ours["loss"], ours["val_macro_auc"]], [theirs["loss"], theirs["val_macro_auc"]],
                                   rtol=1e-4)


@pytest.mark.slow  # 3 runs of 1-2 processes, each compiling: ~1.5 min of CPU
def test_checkpoint_saved_by_one_process_resumes_in_two_which_evaluate_every_test_jet_once(setup, reference):
    tmp, _ = setup
    saved = one_process(setup, "one_then_two", stop_step=3)  # its programs and the reference's are in the cache
    resumed = two_processes(setup, "resumed_in_two", workdir="one_then_two")
    for log in (tmp / "resumed_in_two_logs").iterdir():  # on: jax 0.12.1 hangs in the final test evaluation
        assert "joined, persistent cache off" in log.read_text(), log
    assert_identical(arrays(saved / "after.npz"), arrays(resumed / "before.npz"))
    assert_close(arrays(resumed / "after.npz"), arrays(reference / "after.npz"))
    ours, theirs = (arrays(tmp / run / "evaluation" / "predictions.npz") for run in ("one_then_two", "one"))
    natural_labels = np.concatenate([b["label"] for b in pipeline.test_batches(tmp / "data", num_particles=16,
                                                                                 batch_size=7)])
    np.testing.assert_array_equal(ours["labels"], natural_labels)  # each jet once, in stream order
    np.testing.assert_allclose(ours["scores"], theirs["scores"], atol=SCORES_ATOL)
    np.testing.assert_allclose(ours["embeddings"], theirs["embeddings"], atol=1e-4)
    metrics = [json.loads((tmp / run / "evaluation" / "metrics.json").read_text()) for run in ("one_then_two", "one")]
    np.testing.assert_allclose(metrics[0]["macro_auc"], metrics[1]["macro_auc"], rtol=1e-5)


def test_a_killed_process_ends_the_other_with_an_error(setup):
    tmp, env = setup
    logs = tmp / "killed_logs"
    command = WORKER + [str(tmp / "config.json"), str(tmp / "killed"), str(tmp / "killed_out")]
    started = launch.start(command, 2, logs, heartbeat_timeout=5, env=env)
    deadline = time.monotonic() + 120
    while "joined" not in (logs / "process_0.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    started[1].kill()
    begin = time.monotonic()
    with pytest.raises(launch.ProcessFailed, match=r"process 1 exited with code -9") as failure:
        launch.wait(started, logs, timeout=120, grace=60)
    assert time.monotonic() - begin < 60, "the surviving process did not end by itself"
    assert started[0].returncode not in (0, -9)  # ended by JAX's coordination service, not by the launcher
    assert "heartbeat" in (logs / "process_0.log").read_text()
    assert "process_1.log" in str(failure.value)


def test_a_coordinator_without_the_process_count_is_refused_naming_it(monkeypatch):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1")
    monkeypatch.delenv("JAX_NUM_PROCESSES", raising=False)
    monkeypatch.setenv("JAX_PROCESS_ID", "0")
    with pytest.raises(ValueError, match=r"127.0.0.1:1 is set but JAX_NUM_PROCESSES not.*jetjax.launch"):
        parallel.initialize_distributed()


def test_processes_that_fail_together_are_reported_as_failed_not_timed_out(tmp_path):
    # both processes ending between two polls (as when JAX's coordination service aborts them together) is a
    # failure named by its exit code, not a run that "exceeded" its time
    started = [subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"]) for _ in range(2)]
    for p in started:
        p.wait()
    for index in range(2):
        (tmp_path / f"process_{index}.log").write_text("the error\n")
    with pytest.raises(launch.ProcessFailed, match=r"^process 0 exited with code 3; exit codes .*: \[3, 3\]"):
        launch.wait(started, tmp_path, timeout=600)
