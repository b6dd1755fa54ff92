"""The data-efficiency study in minutes on a 2-core CPU, no download: synthetic jets of the 7 classes, the tiny
model of configs/quickstart.py, a JetCLR encoder pretrained 3 epochs on every training jet, then classifiers on
100 and 1,000 labelled jets, 2 seeds, short epochs (3 x 2,560 sampled jets each).

    python -m jetjax.main --config configs/efficiency_quickstart.py [--workdir runs/efficiency_quickstart]

Another label-free objective than JetCLR: --config configs/efficiency_quickstart.py:jepa (or mpm, vicreg, ...).
"""
from configs import base, efficiency, quickstart


def get_config(objective="jetclr"):
    c = efficiency.add_efficiency(quickstart.make_small(base.get_config()), objective)
    c.data.update(dict(synthetic_jets_per_group=quickstart.SYNTHETIC_JETS_PER_GROUP, epoch_size=2_560, val_size=1_280))
    c.train.epochs = 3
    c.efficiency.update(dict(budgets=(100, 1_000), seeds=(0, 1), pretrain_epochs=3))
    c.efficiency.pretrain_data.epoch_size = 12_800   # pretraining sees many more (unlabelled) jets
    return c
