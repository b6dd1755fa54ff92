"""VICReg (invariance 25, variance 25, covariance 1) on an expander, on JetCLR's two views.

    python -m jetjax.main --config configs/vicreg.py:pretrain --workdir runs/vicreg_pretrain
    python -m jetjax.main --config configs/vicreg.py:finetune --workdir runs/vicreg_finetune
"""
from configs import pretraining


def get_config(stage="pretrain"):
    return pretraining.get_config("vicreg", stage)
