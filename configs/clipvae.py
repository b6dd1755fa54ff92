"""CLIP-VAE: pT-weighted Chamfer reconstruction + KL (beta 0.08) on the best-reconstructed 75% of jets.

    python -m jetjax.main --config configs/clipvae.py:pretrain --workdir runs/clipvae_pretrain
    python -m jetjax.main --config configs/clipvae.py:finetune --workdir runs/clipvae_finetune
"""
from configs import pretraining


def get_config(stage="pretrain"):
    return pretraining.get_config("clipvae", stage)
