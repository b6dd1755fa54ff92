"""JetCLR (NT-Xent, tau 0.1): two views by rotation, translation, soft smearing and collinear splitting.

    python -m jetjax.main --config configs/jetclr.py:pretrain --workdir runs/jetclr_pretrain
    python -m jetjax.main --config configs/jetclr.py:finetune --workdir runs/jetclr_finetune
"""
from configs import pretraining


def get_config(stage="pretrain"):
    return pretraining.get_config("jetclr", stage)
