"""The scaling study: every size pretrains and fine-tunes with the same data, optimiser and budget (only the
model differs), the power-law fit against scipy's linear regression in log-log, the report from finished runs
(the best validation loss read back from the checkpoint record, the parameters counted independently of the
report), and wrong settings named. The end-to-end run of configs/scaling_quickstart.py: README's figures."""
import json

import numpy as np
import pytest
from scipy import stats

from configs import scaling as scaling_config, sizes
from configs import scaling_quickstart
from jetjax import metrics, scaling
from jetjax.checkpoint import Checkpoints
from jetjax.data.classes import JETCLASS2_7
from jetjax.models.sizes import encoder_parameters
from tests.test_study import differences


def test_sizes_differ_only_by_their_model_and_share_data_and_budget(tmp_path):
    config = scaling_config.get_config()
    plan = scaling.stages(config, tmp_path)
    assert [name for name, _, _ in plan] == [f"{s}_{stage}" for s in ("micro", "mini", "part", "s", "m")
                                             for stage in ("pretrain", "finetune")]
    pretrains = [c for name, _, c in plan if name.endswith("pretrain")]
    finetunes = [(size, c) for _, size, c in plan if size is not None]
    model_keys = {f"model.{k}" for k in sizes.SIZES["micro"]}
    for c in pretrains:
        assert c.mode == "pretrain" and c.objective.to_dict() == config.scaling.objective.to_dict()
        assert c.train.epochs == config.scaling.pretrain_epochs and "scaling" not in c
        assert differences(c, pretrains[0]) <= model_keys
    for size, c in finetunes:
        assert c.mode == "finetune" and c.finetune.method == "adapter" and c.train.epochs == 20
        assert c.train.init_from == str(tmp_path / f"{size}_pretrain")
        assert {k: c.model[k] for k in sizes.SIZES[size]} == sizes.SIZES[size]
        assert differences(c, finetunes[0][1]) <= model_keys | {"train.init_from", "evaluate.title"}
    config.scaling.finetune_epochs = 0
    assert all(size is None for _, size, _ in scaling.stages(config, tmp_path))


@pytest.mark.parametrize("key, value, message", [
    ("sizes", ("micro", "huge"), "names 'huge'; choose from micro"),
    ("sizes", ("mini",), "at least two different sizes"),
    ("sizes", ("mini", "mini"), "at least two different sizes")])
def test_a_wrong_setting_names_its_key(tmp_path, key, value, message):
    config = scaling_quickstart.get_config()
    config.scaling[key] = value
    with pytest.raises(ValueError, match=message):
        scaling.stages(config, tmp_path)
    config = scaling_quickstart.get_config()
    config.scaling.objective.name = "supervised"
    with pytest.raises(ValueError, match="scaling.objective.name='supervised'"):
        scaling.stages(config, tmp_path)


def test_power_law_fit_is_the_log_log_least_squares_line():
    n = np.array([6e4, 3.4e5, 2.1e6, 8.5e6])
    assert scaling.fit_power_law(n, 3.0 * n ** -0.12) == pytest.approx((3.0, 0.12), rel=1e-9)
    losses = 5.0 * n ** -0.2 * np.exp(np.random.default_rng(0).normal(0, 0.05, n.size))
    reference = stats.linregress(np.log(n), np.log(losses))
    assert scaling.fit_power_law(n, losses) == pytest.approx((np.exp(reference.intercept), -reference.slope))
    with pytest.raises(ValueError, match="positive finite losses"):
        scaling.fit_power_law(n, [1.0, 0.5, -0.1, 0.2])


def finished_stages(config, workdir, rng):
    """Every stage of the plan written as done: pretraining checkpoints with a record, fine-tuned evaluations."""
    losses, evaluated = {}, {}
    for name, size, c in scaling.stages(config, workdir):
        if size is None:
            losses[name] = float(rng.uniform(0.5, 2.0))
            record = {"epoch": c.train.epochs, "batch": 0, "best": losses[name], "selection": "val_loss"}
            checkpoints = Checkpoints(workdir / name)
            for which in ("latest", "best"):
                checkpoints.save(which, 1, {"w": np.zeros(2, np.float32)}, record)
            checkpoints.close()
        else:
            labels = rng.integers(0, 7, 300)
            scores = rng.dirichlet(np.ones(7), 300)
            values = metrics.evaluate(scores, labels, JETCLASS2_7.names, "qcd")
            (workdir / name / "evaluation").mkdir(parents=True)
            metrics.write_json(workdir / name / "evaluation" / "metrics.json", values)
            evaluated[size] = values
    return losses, evaluated


def test_report_of_finished_runs_holds_parameters_losses_fit_and_fine_tuned_metrics(tmp_path, capsys):
    config = scaling_quickstart.get_config()
    config.data.update(dict(root=str(tmp_path / "never_read"), synthetic_jets_per_group=0))
    losses, evaluated = finished_stages(config, tmp_path, np.random.default_rng(1))
    result = scaling.run(config, tmp_path)
    assert capsys.readouterr().out.count("done, skipped") == 6
    rows = result["rows"]
    assert [r["size"] for r in rows] == ["micro", "mini", "part"]
    assert [r["val_loss"] for r in rows] == [losses[f"{s}_pretrain"] for s in ("micro", "mini", "part")]
    assert [r["macro_auc"] for r in rows] == [evaluated[s]["macro_auc"] for s in ("micro", "mini", "part")]
    # the encoder at the quickstart's other settings (1 class-token block); tests/test_sizes.py checks the count
    assert [r["parameters"] for r in rows] == [encoder_parameters({**config.model, **sizes.SIZES[s]}, 7)
                                               for s in ("micro", "mini", "part")]
    assert rows[0]["parameters"] < rows[1]["parameters"] < rows[2]["parameters"]
    a, alpha = scaling.fit_power_law([r["parameters"] for r in rows], [r["val_loss"] for r in rows])
    saved = json.loads((tmp_path / "report" / "scaling.json").read_text())
    assert saved["power_law"] == pytest.approx({"a": a, "alpha": alpha})
    markdown = (tmp_path / "report" / "scaling.md").read_text()
    assert f"| part | {rows[2]['parameters']:,} | {losses['part_pretrain']:.4f} |" in markdown
    assert (tmp_path / "report" / "scaling.png").stat().st_size > 10_000
