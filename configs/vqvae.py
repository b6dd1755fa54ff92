"""The particle tokenizer of MPM with VQ-VAE tokens: a VQ-VAE on the particles of each jet (512 codes, 16-dim
latent, small transformer encoder and decoder, L1 reconstruction, commitment 0.25, EMA codebook with dead-code
restarts; --config.objective.codebook_update=gradient for a codebook trained by gradients). Trained as a
pretraining run of its own; configs/mpm_vq.py reads its best checkpoint.

    python -m jetjax.main --config configs/vqvae.py --workdir runs/vqvae
"""
from configs import pretraining


def get_config():
    return pretraining.get_config("vqvae", "pretrain")
