"""Shared test helpers: the real-data folder beside the project root, and fast compiles."""
from pathlib import Path

import jax
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

jax.config.update("jax_disable_most_optimizations", True)


def shared_path(*parts):
    """Path inside ../shared (beside the project root); skip the test with a reason if it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: the real reference data lives in ../shared beside the project root")
    return path
