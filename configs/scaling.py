"""The scaling study (jetjax.scaling) on jets simulated locally with Pythia 8 + FastJet: masked particle
modeling pretrained 50 epochs at five encoder sizes from 0.06M to 46M parameters (configs/sizes.py:
micro, mini, part = the reference ParT, s, m), then a frozen backbone + adapter classifier (seed 003's reuse)
fine-tuned 20 epochs on each encoder. <workdir>/report holds scaling.md/.csv/.json and scaling.png (validation
loss against parameters, log-log, with the fitted power law; fine-tuned test macro AUC per size).

    python -m jetjax.data.simulate --out data/jetclass2_sim --jets-per-class 10000 --seed 0 --workers 8
    python -m jetjax.main --config configs/scaling.py [--workdir runs/scaling]          (a GPU box)

Larger rungs: --config.scaling.sizes='("part","s","m","l","xl")' (train.batch_size: docs/scaling.md's
recommended batch per device); another objective: --config.scaling.objective.name=jetclr
--config.scaling.objective.mask_fraction ... (the settings of configs/pretraining.py's OBJECTIVES).
"""
import ml_collections

from configs import base, pretraining, study_sim


def add_scaling(c, sizes=("micro", "mini", "part", "s", "m"), objective="mpm"):
    """`c` in scaling mode: `objective` (configs/pretraining.py's settings) at every size of `sizes`, each
    encoder then reused by a frozen backbone + adapter classifier."""
    c.mode = "scaling"
    c.finetune.method = "adapter"
    c.scaling = ml_collections.ConfigDict(dict(
        sizes=sizes,                                            # configs/sizes.py, smallest first
        objective=ml_collections.ConfigDict(dict(name=objective, **pretraining.OBJECTIVES[objective])),
        pretrain_epochs=pretraining.PRETRAIN_EPOCHS,
        finetune_epochs=pretraining.FINETUNE_EPOCHS,            # 0: pretraining and the power law only
    ))
    return c


def get_config():
    return study_sim.with_sim_data(add_scaling(base.get_config()))
