"""Every script in experiments/ runs (tiny settings, on the CPU), so none rots unseen: each exits cleanly and
prints its figures. What they measure is read by people from their output, not asserted here."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jetjax.data import synthetic

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"

SCRIPTS = {
    "bench_block_scan.py": ["--layers", "2", "--batch", "4", "--particles", "16", "--steps", "1"],
    "bench_data.py": ["--jets-per-group", "300", "--feature-sets", "kin", "--num-particles", "32",
                      "--batch-size", "32", "--epoch-size", "256", "--workers", "0", "1"],
    "bench_export.py": ["--batch", "4", "--slots", "32", "--steps", "1", "--rounds", "1"],
    "bench_sizes.py": ["--sizes", "micro", "--throughput", "micro", "--num-particles", "16", "--batch", "4",
                       "--steps", "1"],
    "bench_train.py": ["--config", "quickstart", "mpm", "--size", "micro", "--batch", "16", "--particles", "32",
                       "--batches", "2", "--repeats", "1"],
    "length_grouping_auc.py": ["--data", "{data}", "--out", "{tmp}/runs", "--seeds", "0", "--window", "4",
                               "--epochs", "1", "--epoch-size", "1408", "--val-size", "128"],
    "sim_physics_check.py": ["--jets-per-class", "4"],
    "pair_mass_rounding.py": ["--formats", "stablehlo"],  # the reference ParT on the real jets of ../shared
    "gpu_check.py": ["--tiny", "--out", "{tmp}/gpu_check"],  # runs bench_reference.py with tiny settings
}
ELSEWHERE = {"bench_reference.py": "run by gpu_check.py --tiny above",
             "vq_usage.py": "run in tests/test_tokens.py on the tokenizer that test trains"}


def run_script(name, args, tmp_path):
    """The script's stdout; fails with its output if it exits with an error."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
    done = subprocess.run([sys.executable, str(EXPERIMENTS / name), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done.stdout


def test_every_script_is_smoke_tested():
    scripts = {p.name for p in EXPERIMENTS.glob("*.py")}
    assert scripts == set(SCRIPTS) | set(ELSEWHERE)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_runs(name, tmp_path):
    if name == "pair_mass_rounding.py" and not (ROOT.parent / "shared" / "reference").exists():
        pytest.skip("pair_mass_rounding.py scores the real jets of ../shared, not found beside the project root")
    if name == "sim_physics_check.py":
        pytest.importorskip("pythia8mc", reason="the simulation needs the sim extra: pip install -e '.[sim]'")
    data = tmp_path / "data"
    if "{data}" in SCRIPTS[name]:
        synthetic.write_dataset(data, 600, seed=0)
    args = [a.format(data=data, tmp=tmp_path) for a in SCRIPTS[name]]
    out = run_script(name, args, tmp_path)
    if name == "gpu_check.py":  # the final table, every stage ok
        table = out[out.index("| stage |"):]
        assert all(f"| {stage} | ok |" in table
                   for stage in ("environment", "first_step", "fidelity", "quickstart", "quickstart_warm", "benchmark")), table
    else:  # at least one JSON line or printed figure
        assert out.strip(), f"{name} printed nothing"

