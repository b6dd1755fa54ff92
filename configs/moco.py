"""MoCo v3 (momentum encoder 0.99, predictor, InfoNCE tau 0.2 against the batch's keys) on JetCLR's two views;
MoCo v2's queue of earlier keys with --config.objective.queue_size=4096 --config.objective.predictor_hidden=0.

    python -m jetjax.main --config configs/moco.py:pretrain --workdir runs/moco_pretrain
    python -m jetjax.main --config configs/moco.py:finetune --workdir runs/moco_finetune
"""
from configs import pretraining


def get_config(stage="pretrain"):
    return pretraining.get_config("moco", stage)
