"""The data-efficiency study (jetjax.efficiency) on jets simulated locally with Pythia 8 + FastJet: a JetCLR
encoder pretrained 50 epochs on every training jet without labels, then 7-way classifiers trained on
10^2, 10^3 and 10^4 labelled jets from scratch, as a linear probe, frozen + adapter and fully fine-tuned, 3 seeds
each; <workdir>/report holds the table (efficiency.md/.csv/.json) and efficiency.png. Measures how many labels
pretraining saves on the study's task: the gap to "From scratch" at each budget.

    python -m jetjax.data.simulate --out data/jetclass2_sim --jets-per-class 10000 --seed 0 --workers 8
    python -m jetjax.main --config configs/efficiency.py [--workdir runs/efficiency]

On JetClass-II (add 10^5: the split holds millions of jets per class; only the files needed are read):
    --config.data.root=data/JetClass-II --config.data.epoch_size=200000 --config.data.val_size=100000 \\
    --config.efficiency.budgets='(100,1000,10000,100000)'
A subset: --config.efficiency.methods='("scratch","finetune")' --config.efficiency.seeds='(0,)'; an encoder
pretrained elsewhere: --config.efficiency.pretrained=runs/jetclr_pretrain (no pretraining stage then); another
label-free objective with its settings of configs/pretraining.py: --config configs/efficiency.py:jepa (or mpm, ...).
"""
import ml_collections
from ml_collections import config_dict

from configs import base, pretraining, study_sim


def add_efficiency(c, objective="jetclr"):
    """`c` in efficiency mode with the study's methods, budgets, seeds and a label-free pretraining objective
    (SupCon uses the labels: not for this study)."""
    if objective not in pretraining.OBJECTIVES or objective == "supcon":
        label_free = ", ".join(o for o in pretraining.OBJECTIVES if o != "supcon")
        raise ValueError(f"the efficiency study's objective {objective!r} is not a label-free pretraining objective; "
                         f"choose one of {label_free} (e.g. --config configs/efficiency.py:jepa)")
    c.mode = "efficiency"
    c.train.epochs = pretraining.FINETUNE_EPOCHS               # every classifier run, every budget
    c.efficiency = ml_collections.ConfigDict(dict(
        methods=("scratch", "probe", "adapter", "finetune"),   # jetjax.efficiency.METHODS (also "lora")
        budgets=(100, 1_000, 10_000),                          # labelled training jets (data.label_budget)
        seeds=(0, 1, 2),                                       # each: its labelled subset, init and sampling
        pretrained=config_dict.placeholder(str),               # a pretraining workdir; unset: pretrain here
        objective=ml_collections.ConfigDict(dict(name=objective, **pretraining.OBJECTIVES[objective])),
        pretrain_epochs=pretraining.PRETRAIN_EPOCHS,
        pretrain_data=base.unset_like(c.data),                      # overrides of `data` for pretraining (transfer)
    ))
    return c


def get_config(objective="jetclr"):
    return study_sim.with_sim_data(add_efficiency(base.get_config(), objective))
