"""A regression task on the quickstart's scale: the jet's soft-drop mass over its pT (`jet_sdmass/jet_pt`; the
inputs are rescaled to pT = 500 GeV, so the target must not carry the jet's energy scale) with the tiny model of
configs/quickstart.py on its synthetic jets; the 7 classes still choose the jets, the results come per class.

    python -m jetjax.main --config configs/regression.py --workdir runs/regression                 # from scratch
    python -m jetjax.main --config configs/regression.py:pretrain --workdir runs/regression_pretrain  # JEPA, no labels
    python -m jetjax.main --config configs/regression.py:finetune --workdir runs/regression_finetune  # on that encoder

Another target: --config.regression.target=jet_sdmass (one column) or 'a/b'; the Huber loss:
--config.regression.loss=huber; a frozen encoder: --config.finetune.method=adapter (also last_k, lora).
"""
from configs import pretraining, quickstart

TARGET = "jet_sdmass/jet_pt"


def get_config(stage="supervised"):
    c = quickstart.get_config()
    if stage == "pretrain":
        c.mode = "pretrain"
        c.objective.update(dict(name="jepa", **pretraining.OBJECTIVES["jepa"]))
        return c
    c.regression.target = TARGET
    if stage == "finetune":
        c.mode = "finetune"
        c.train.init_from = "runs/regression_pretrain"
    elif stage != "supervised":
        raise ValueError(f"config argument must be 'supervised', 'pretrain' or 'finetune', got {stage!r} "
                         "(e.g. --config configs/regression.py:finetune)")
    return c
