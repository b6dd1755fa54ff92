"""Which devices a run computes on: the compute dtype `model.dtype` names, the device line every run prints
at its start, and the warning when the machine has a GPU or TPU that jax does not use (a CPU-only jax
installed where the `cuda12` or `tpu` extra was needed).

Only the standard library is imported at module level: the Colab notebook asks `visible_accelerator()`
which extra to install before jax is imported.
"""
import glob
import os
import shutil
import warnings
from collections import Counter

INSTALL_COMMANDS = {"gpu": 'pip install -e ".[cuda12]"', "tpu": 'pip install -e ".[tpu]"'}
"""What installs jax's backend for an accelerator the system shows (from the project root)."""

EXTRAS = {"gpu": "cuda12", "tpu": "tpu"}
"""The pyproject extra of each accelerator."""

DTYPES = ("auto", "float32", "bfloat16", "float16")
"""Values of config `model.dtype`: `auto` computes in bfloat16 on GPU and TPU, float32 on the CPU."""


def system_accelerators():
    """Accelerators the operating system shows, whatever jax sees: {'gpu'} when an NVIDIA driver is there
    (`nvidia-smi` on PATH or /dev/nvidia0), {'tpu'} for TPU device files (/dev/accel*, or the numbered VFIO
    groups of v5e and later)."""
    found = set()
    if shutil.which("nvidia-smi") or os.path.exists("/dev/nvidia0"):
        found.add("gpu")
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
        found.add("tpu")
    return found


def visible_accelerator(found=None):
    """The accelerator to install jax for ('gpu' or 'tpu'; TPU first, as TPU hosts may carry no GPU
    driver but GPU hosts never have TPU device files), or None on a CPU-only machine."""
    found = system_accelerators() if found is None else found
    return next((name for name in ("tpu", "gpu") if name in found), None)


def unused_accelerator_warning(platform, found, requested=""):
    """The warning for a run whose jax `platform` is the CPU while the system shows the accelerators `found`
    (system_accelerators()), with the command that fixes it; None when nothing is left unused or the CPU was
    asked for (`requested`: the JAX_PLATFORMS environment variable)."""
    accelerator = visible_accelerator(found)
    if platform != "cpu" or accelerator is None or requested == "cpu":
        return None
    return (f"jax runs on the CPU, but this machine has a {accelerator.upper()}: the installed jax has no "
            f"{accelerator.upper()} backend. Install it with `{INSTALL_COMMANDS[accelerator]}` from the jetjax "
            "folder and restart the run (or the notebook's runtime).")


def compute_dtype(name, platform):
    """The jnp dtype the model computes in for config `model.dtype` = `name` on `platform` (jax's
    default_backend()). Parameters and optimiser state stay float32 whatever the compute dtype."""
    import jax.numpy as jnp

    if name not in DTYPES:
        raise ValueError(f"config model.dtype={name!r} is not one of {DTYPES}")
    if name == "auto":
        return jnp.dtype(jnp.float32 if platform == "cpu" else jnp.bfloat16)
    return jnp.dtype(name)


def device_line(devices, process_count, dtype):
    """One line: platform, device kinds and counts, processes, compute dtype. `devices` are jax devices
    (anything with `.platform` and `.device_kind`)."""
    platforms = sorted({d.platform for d in devices})
    kinds = ", ".join(f"{count} x {kind}" for kind, count in Counter(d.device_kind for d in devices).items())
    processes = f"{process_count} process" + ("es" if process_count > 1 else "")
    return f"devices: {'/'.join(platforms)} ({kinds}), {processes}, compute dtype {dtype}"


def announce(dtype):
    """Print the device line of a run computing in `dtype`, and warn when an accelerator is left unused."""
    import jax

    print(device_line(jax.devices(), jax.process_count(), dtype))
    message = unused_accelerator_warning(jax.default_backend(), system_accelerators(),
                                         os.environ.get("JAX_PLATFORMS", ""))
    if message:
        warnings.warn(message, stacklevel=2)
