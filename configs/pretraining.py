"""Shared shape of the representation-learning configs: `get_config(objective, stage)` gives the
pretraining run (50 epochs, the study's §2.2) or the fine-tuning run (20 epochs, a new 7-way linear head
on the pretrained encoder from `runs/<objective>_pretrain`)."""
from configs import base

OBJECTIVES = {
    "supcon": dict(temperature=0.07),
    "jetclr": dict(temperature=0.1),
    "mpm": dict(mask_fraction=0.3),
    "clipvae": dict(beta=0.08, clip_fraction=0.75),
    "vqvae": dict(num_codes=512, latent=16, codebook_update="ema", dead_code_steps=100),
    "mpm_vq": dict(mask_fraction=0.3, tokenizer_run="runs/vqvae"),
    "mpm_kmeans": dict(mask_fraction=0.3, num_clusters=512, kmeans_jets=20_000),
    "vicreg": dict(invariance=25.0, variance=25.0, covariance=1.0),
    "simsiam": dict(stop_gradient=True),
    "moco": dict(temperature=0.2, momentum=0.99, queue_size=0, predictor_hidden=256),
    "jepa": dict(mask_fraction=0.3, masking="random", momentum=0.996, momentum_end=1.0, loss="smooth_l1",
                 predictor_positions=True),
}
"""Each pretraining objective's settings (keywords of jetjax.objectives.build; the rest keep its defaults)."""
PRETRAIN_EPOCHS, FINETUNE_EPOCHS = 50, 20


def get_config(objective, stage="pretrain"):
    c = base.get_config()
    if stage == "pretrain":
        c.mode = "pretrain"
        c.train.epochs = PRETRAIN_EPOCHS
        c.objective.update(dict(name=objective, **OBJECTIVES[objective]))
    elif stage == "finetune":
        c.mode = "finetune"
        c.train.epochs = FINETUNE_EPOCHS
        c.train.init_from = f"runs/{objective}_pretrain"
    else:
        raise ValueError(f"config argument must be 'pretrain' or 'finetune', got {stage!r} "
                         f"(e.g. --config configs/{objective}.py:finetune)")
    return c
