"""experiments/colab_quickstart.ipynb runs top to bottom on CPU with tiny parameters: any cell error fails.

Parameters are injected as papermill does: a cell after the one tagged `parameters` assigns the tiny values.
The weaver-checkpoint cell converts a tiny weaver state_dict written here (the reference file's full-size ParT
would cost a 30 s compile)."""
import os
from pathlib import Path

import jax
import nbformat
import numpy as np
from nbclient import NotebookClient

from jetjax.models.convert import save_state_dict, to_state_dict
from jetjax.models.part import ParT

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "experiments" / "colab_quickstart.ipynb"
TINY_MODEL = dict(embed_dims=(16, 16, 16), pair_embed_dims=(8, 8), num_heads=2, num_layers=1, num_cls_layers=1)
TINY = dict(jets_per_group=1500, num_particles=16, epochs=1, epoch_size=256, val_size=128, batch_size=64,
            overrides={**{f"model.{k}": v for k, v in TINY_MODEL.items()}, "optimizer.warmup_steps": 0,
                       "layout.mode": "dense", "layout.buckets": 1})  # one program per step function


def with_parameters(notebook, values):
    """`notebook` with a cell assigning `values` inserted after its cell tagged `parameters`."""
    index = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in values.items())))
    return notebook


def tiny_weaver_checkpoint(path):
    """A weaver ParT state_dict (0.5 layout) of a tiny random ParT on the 7 kin features, 4 classes, as .npz."""
    part = ParT(num_classes=4, **TINY_MODEL)
    shapes = jax.eval_shape(part.init, jax.random.key(0), np.zeros((2, 16, 7), np.float32),
                            np.zeros((2, 16, 4), np.float32), np.ones((2, 16), bool))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(s.dtype), shapes)
    variables["batch_stats"] = jax.tree.map(np.abs, variables["batch_stats"])  # variances > 0
    return save_state_dict(to_state_dict(variables, weaver_version="0.5"), path)


def outputs_of(notebook):
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]


def test_notebook_runs_top_to_bottom_on_cpu(tmp_path):
    checkpoint = tiny_weaver_checkpoint(tmp_path / "tiny_weaver.npz")
    notebook = with_parameters(nbformat.read(NOTEBOOK, as_version=4), {
        **TINY, "workdir": str(tmp_path / "run"), "weaver_checkpoint": str(checkpoint), "weaver_prefix": "",
        "weaver_num_heads": 2, "weaver_version": "0.5"})
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute(env={**os.environ, "JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"})

    outputs = outputs_of(notebook)
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    markdown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert "devices: cpu" in text and "compute dtype float32" in text  # auto on the CPU
    assert "Table 1: Global metrics on the test set." in markdown
    assert len(images) == 2  # the curves and one ROC figure
    assert f"{checkpoint}: 1+1 blocks, widths (16, 16, 16), 2 heads; logits (" in text
    assert (tmp_path / "run" / "evaluation" / "metrics.json").exists()
