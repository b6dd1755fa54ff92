"""MPM with VQ-VAE tokens (Heinrich et al.): 30% of real particles hidden from the encoder, a decoder
classifies each into its token of the frozen tokenizer in objective.tokenizer_run (train configs/vqvae.py first).

    python -m jetjax.main --config configs/vqvae.py --workdir runs/vqvae
    python -m jetjax.main --config configs/mpm_vq.py:pretrain --workdir runs/mpm_vq_pretrain
    python -m jetjax.main --config configs/mpm_vq.py:finetune --workdir runs/mpm_vq_finetune
"""
from configs import pretraining


def get_config(stage="pretrain"):
    return pretraining.get_config("mpm_vq", stage)
