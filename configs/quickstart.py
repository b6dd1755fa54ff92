"""Quickstart: a tiny ParT trained on synthetic jets of the study's 7 classes, then evaluated on the
natural test stream; about a minute on a 2-core CPU, no download (the data are generated in the workdir).

    python -m jetjax.main --config configs/quickstart.py [--workdir runs/quickstart]
"""
from configs import base


SYNTHETIC_JETS_PER_GROUP = 8000
"""The quickstart configs' data when no data.root is given (generated in the workdir)."""


def make_small(c):
    """`c` shrunk to a 2-core CPU: 32 particle slots (the pair features cost P^2), a tiny encoder, short epochs,
    a smaller kNN probe. Where the data come from is left to the config (data.root)."""
    c.data.num_particles = 32
    c.data.epoch_size = 12_800
    c.data.val_size = 2_560
    c.model.update(dict(embed_dims=(32, 64, 32), pair_embed_dims=(16, 16), num_heads=4, num_layers=2,
                        num_cls_layers=1, dropout=0.0, attn_dropout=0.0, activation_dropout=0.0))
    c.optimizer.learning_rate = 2e-3
    c.optimizer.warmup_steps = 20
    c.train.epochs = 3
    c.train.batch_size = 128
    c.train.log_every = 10
    # at 32 slots the packed layout saves little work but compiles up to 4 programs per step function where
    # the slot buckets (16, 32) need at most 2; compiling dominates such tiny runs
    c.layout.mode = "dense"
    c.knn.update(dict(train_jets=1024, val_jets=512))
    return c


def get_config():
    c = make_small(base.get_config())
    c.data.synthetic_jets_per_group = SYNTHETIC_JETS_PER_GROUP
    c.mode = "supervised"
    return c
