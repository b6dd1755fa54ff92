"""SimSiam: projector and predictor, symmetric negative cosine with stop-gradient, on JetCLR's two views.

    python -m jetjax.main --config configs/simsiam.py:pretrain --workdir runs/simsiam_pretrain
    python -m jetjax.main --config configs/simsiam.py:finetune --workdir runs/simsiam_finetune
"""
from configs import pretraining


def get_config(stage="pretrain"):
    return pretraining.get_config("simsiam", stage)
