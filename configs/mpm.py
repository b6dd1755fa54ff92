"""Masked particle modeling: 30% of real particles hidden from the encoder and reconstructed by a small decoder.

    python -m jetjax.main --config configs/mpm.py:pretrain --workdir runs/mpm_pretrain
    python -m jetjax.main --config configs/mpm.py:finetune --workdir runs/mpm_finetune
"""
from configs import pretraining


def get_config(stage="pretrain"):
    return pretraining.get_config("mpm", stage)
