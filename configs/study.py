"""The study (§2-4) on JetClass-II: Ours (AdamW and Muon) and ParT trained supervised; SupCon, CLIP-VAE,
JetCLR and MPM pretrained 50 epochs then fine-tuned 20 epochs with a 7-way linear head; every classifier
evaluated on the natural test stream; Tables 1-4, ROC curves and the t-SNE of validation embeddings in
<workdir>/report. Every run shares the settings of configs/base.py.

    python -m jetjax.main --config configs/study.py --config.data.root=/path/to/JetClass-II [--workdir runs/study]

A subset: --config.study.objectives='("supcon",)' --config.study.supervised='("part",)'
"""
import ml_collections

from configs import base, pretraining, supervised_ours, supervised_ours_muon


def add_study(c):
    """`c` (a base config) in study mode, with the study section describing the methods."""
    c.mode = "study"
    c.study = ml_collections.ConfigDict(dict(
        supervised=("ours", "ours_muon", "part"),          # jetjax.study.SUPERVISED
        objectives=("supcon", "clipvae", "jetclr", "mpm"),  # jetjax.study.OBJECTIVES
        pretrain_epochs=pretraining.PRETRAIN_EPOCHS,        # supervised runs: train.epochs
        finetune_epochs=pretraining.FINETUNE_EPOCHS,
        objective_settings=pretraining.OBJECTIVES,
        ours_model=supervised_ours.OURS_MODEL,
        muon_learning_rate=supervised_ours_muon.MUON_LEARNING_RATE,
        tsne=("supcon_pretrain", "ours"),                   # the study's Figure 1: stages whose encoders are shown
        tsne_points=2000,                                   # validation jets per t-SNE panel
    ))
    return c


def get_config():
    return add_study(base.get_config())
