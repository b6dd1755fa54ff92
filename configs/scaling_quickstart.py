"""The scaling study on a 2-core CPU, no download: synthetic jets of the 7 classes at 32 particle slots
(configs/quickstart.py's data), masked particle modeling pretrained 3 epochs of 12,800 jets at three sizes
(micro, mini, part: 0.06M to 2.1M encoder parameters), then a frozen + adapter classifier 2 epochs on each.

    python -m jetjax.main --config configs/scaling_quickstart.py [--workdir runs/scaling_quickstart]
"""
from configs import base, quickstart, scaling


def get_config():
    c = scaling.add_scaling(quickstart.make_small(base.get_config()), sizes=("micro", "mini", "part"))
    c.data.synthetic_jets_per_group = quickstart.SYNTHETIC_JETS_PER_GROUP
    c.scaling.update(dict(pretrain_epochs=3, finetune_epochs=2))
    return c
