"""MPM with K-means tokens (Leigh et al.): as configs/mpm_vq.py, the tokens the nearest of 512 K-means centroids
of particle input features, fitted once on 20,000 training jets and kept as <workdir>/kmeans_tokens.npz.

    python -m jetjax.main --config configs/mpm_kmeans.py:pretrain --workdir runs/mpm_kmeans_pretrain
    python -m jetjax.main --config configs/mpm_kmeans.py:finetune --workdir runs/mpm_kmeans_finetune
"""
from configs import pretraining


def get_config(stage="pretrain"):
    return pretraining.get_config("mpm_kmeans", stage)
