"""The device line, the compute dtype `model.dtype` resolves to, and the warning for an accelerator the system
shows but jax does not use (detection monkeypatched: this machine has neither)."""
import fnmatch
import re
import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import quickstart
from jetjax import build, devices, feeding
from jetjax.steps import init_state, make_train_step


PORTABLE_CUSTOM_CALLS = {"Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape"}
"""Custom calls every XLA backend implements (sharding annotations)."""


def fake_device(platform, kind):
    return types.SimpleNamespace(platform=platform, device_kind=kind)


@pytest.mark.parametrize("found, command", [({"gpu"}, 'pip install -e ".[cuda12]"'),
                                            ({"tpu"}, 'pip install -e ".[tpu]"')])
def test_cpu_jax_beside_an_accelerator_warns_with_the_fix(found, command):
    message = devices.unused_accelerator_warning("cpu", found)
    assert command in message and "jax runs on the CPU" in message


@pytest.mark.parametrize("platform, found, requested", [
    ("gpu", {"gpu"}, ""),       # jax uses the GPU
    ("tpu", {"tpu"}, ""),
    ("cpu", set(), ""),         # a CPU-only machine
    ("cpu", {"gpu"}, "cpu"),    # JAX_PLATFORMS=cpu: the CPU was asked for
])
def test_no_warning_when_nothing_is_left_unused(platform, found, requested):
    assert devices.unused_accelerator_warning(platform, found, requested) is None


def test_system_accelerators_reads_the_driver_and_device_files(monkeypatch):
    files = set()
    monkeypatch.setattr(devices.shutil, "which", lambda name: None)
    monkeypatch.setattr(devices.os.path, "exists", lambda path: path in files)
    monkeypatch.setattr(devices.glob, "glob", lambda pattern: [f for f in files if fnmatch.fnmatch(f, pattern)])
    assert devices.system_accelerators() == set() and devices.visible_accelerator() is None
    files.add("/dev/nvidia0")
    assert devices.system_accelerators() == {"gpu"} and devices.visible_accelerator() == "gpu"
    files.clear()
    monkeypatch.setattr(devices.shutil, "which", lambda name: "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None)
    assert devices.system_accelerators() == {"gpu"}
    monkeypatch.setattr(devices.shutil, "which", lambda name: None)
    files.add("/dev/vfio/0")  # TPU v5e and later
    assert devices.system_accelerators() == {"tpu"}
    files.add("/dev/accel0")
    assert devices.system_accelerators() == {"tpu"} and devices.visible_accelerator() == "tpu"


def test_compute_dtype():
    assert devices.compute_dtype("auto", "cpu") == jnp.float32
    assert devices.compute_dtype("auto", "gpu") == jnp.bfloat16
    assert devices.compute_dtype("auto", "tpu") == jnp.bfloat16
    assert devices.compute_dtype("bfloat16", "cpu") == jnp.bfloat16
    assert devices.compute_dtype("float32", "gpu") == jnp.float32
    with pytest.raises(ValueError, match="model.dtype='bf16'"):
        devices.compute_dtype("bf16", "cpu")


def test_build_model_resolves_auto_for_this_backend():
    config = quickstart.get_config()
    config.model.dtype = "auto"
    assert build.build_model(config).encoder.dtype == (jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16)


def test_device_line():
    gpus = [fake_device("gpu", "NVIDIA H100 80GB HBM3")] * 8
    assert devices.device_line(gpus, 2, jnp.dtype(jnp.bfloat16)) == \
        "devices: gpu (8 x NVIDIA H100 80GB HBM3), 2 processes, compute dtype bfloat16"
    assert devices.device_line(jax.devices(), 1, jnp.dtype(jnp.float32)) == \
        f"devices: {jax.default_backend()} ({jax.device_count()} x {jax.devices()[0].device_kind}), 1 process, " \
        "compute dtype float32"


def test_announce_prints_the_line_and_warns(monkeypatch, capsys):
    monkeypatch.setattr(devices, "system_accelerators", lambda: {"gpu"})
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    expect_warning = jax.default_backend() == "cpu"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        devices.announce(jnp.dtype(jnp.float32))
    assert capsys.readouterr().out.startswith("devices: ")
    assert any('".[cuda12]"' in str(w.message) for w in caught) == expect_warning


def test_the_engine_train_step_lowers_for_tpu_without_platform_kernels():
    """The whole train step (packed attention with the pair bias, masked BatchNorm, dropout, AdamW) in
    bfloat16 lowers for TPU from this CPU machine, and calls no platform-specific kernel (a CUDA-only fused
    kernel would fail to lower or show up as a custom call)."""
    from conftest import toy_jets
    from jetjax import build, optim, parallel

    config = quickstart.get_config()
    config.model.update(dict(embed_dims=(16, 16, 16), pair_embed_dims=(8, 8), num_heads=2, num_layers=1,
                             num_cls_layers=1, dtype="bfloat16"))
    config.data.num_particles = 16
    config.layout.mode = "packed"
    model = build.build_model(config)
    tx = optim.make_optimizer(100, **config.optimizer)
    batch = {k: np.asarray(v) for k, v in toy_jets(batch=4, slots=16, lengths=(16, 9, 3, 1)).items()}
    state = jax.eval_shape(lambda: init_state(model, tx, batch, jax.random.key(0)))
    feeder = feeding.Feeder(model, parallel.data_mesh(), 16, feeding.layout_settings(config))
    feeder.settle([batch])
    batch, plan = feeder.prepare(batch)
    assert plan is not None  # the packed layout
    exported = jax.export.export(make_train_step(model, tx), platforms=["tpu"])(state, batch, plan)
    assert exported.platforms == ("tpu",)
    assert set(re.findall(r"custom_call @(\w+)", exported.mlir_module())) <= PORTABLE_CUSTOM_CALLS
