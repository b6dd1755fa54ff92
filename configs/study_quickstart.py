"""The whole study in minutes on a 2-core CPU, no download: synthetic jets of the 7 classes and the tiny model
of configs/quickstart.py, every method of configs/study.py with short epochs (6,400 sampled jets; supervised
3 epochs, pretraining 2, fine-tuning 2); prints Table 1.

    python -m jetjax.main --config configs/study_quickstart.py [--workdir runs/study_quickstart]
"""
from configs import base, quickstart, study


def get_config():
    c = study.add_study(quickstart.make_small(base.get_config()))
    c.data.update(dict(synthetic_jets_per_group=quickstart.SYNTHETIC_JETS_PER_GROUP, epoch_size=6_400))
    c.study.pretrain_epochs = 2
    c.study.finetune_epochs = 2
    return c
