"""JEPA: MPM's masking (30% of real particles), a predictor regresses the particle tokens a momentum (EMA,
0.996 -> 1) target encoder gives the masked particles (smooth L1 on layer-normalised targets, as I-JEPA's code);
block masking in (deta, dphi) with --config.objective.masking=block.

    python -m jetjax.main --config configs/jepa.py:pretrain --workdir runs/jepa_pretrain
    python -m jetjax.main --config configs/jepa.py:finetune --workdir runs/jepa_finetune
"""
from configs import pretraining


def get_config(stage="pretrain"):
    return pretraining.get_config("jepa", stage)
