"""The command line entry point runs a config file end to end."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_config_prints_encoder_summary():
    result = subprocess.run([sys.executable, "-m", "jetjax.main", "--config", "configs/quickstart.py"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "total" in result.stdout and "44,675" in result.stdout
    assert "logits (4, 7)" in result.stdout


def test_misspelt_override_fails_naming_the_key():
    result = subprocess.run([sys.executable, "-m", "jetjax.main", "--config", "configs/quickstart.py",
                             "--config.model.num_layerz=3"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "num_layerz" in result.stderr
