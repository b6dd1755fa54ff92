"""Supervised contrastive (SupCon, tau 0.07): two augmented views, positives = same class across views.

    python -m jetjax.main --config configs/supcon.py:pretrain --workdir runs/supcon_pretrain
    python -m jetjax.main --config configs/supcon.py:finetune --workdir runs/supcon_finetune
"""
from configs import pretraining


def get_config(stage="pretrain"):
    return pretraining.get_config("supcon", stage)
