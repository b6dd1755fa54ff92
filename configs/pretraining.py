"""Shared shape of the representation-learning configs: `get_config(objective, stage)` gives the
pretraining run (50 epochs, the study's §2.2) or the fine-tuning run (20 epochs, a new 7-way linear head
on the pretrained encoder from `runs/<objective>_pretrain`)."""
from configs import base


def get_config(objective, stage="pretrain", **settings):
    c = base.get_config()
    if stage == "pretrain":
        c.mode = "pretrain"
        c.train.epochs = 50
        c.objective.update(dict(name=objective, **settings))
    elif stage == "finetune":
        c.mode = "finetune"
        c.train.epochs = 20
        c.train.init_from = f"runs/{objective}_pretrain"
    else:
        raise ValueError(f"config argument must be 'pretrain' or 'finetune', got {stage!r} "
                         f"(e.g. --config configs/{objective}.py:finetune)")
    return c
