"""Transfer to top tagging: a JetCLR encoder pretrained on JetClass-II (kin features: Top Landscape stores
four-vectors only), then the data-efficiency study (jetjax.efficiency) on the Top Landscape benchmark, QCD
against top, 10^2..10^5 labelled jets. Measures what JetClass-II pretraining is worth on another detector
simulation (Delphes ATLAS-like, anti-kT R = 0.8, pT 550-650 GeV) and task: the macro AUC (= the binary AUC)
and accuracy of each method against "From scratch" at each budget.

    python -m jetjax.data.fetch JetClass-II --out data --parts study
    python -m jetjax.data.fetch TopLandscape --out data
    python -m jetjax.main --config configs/transfer_top_landscape.py [--workdir runs/transfer_top_landscape]

Pretrained on simulated jets instead: --config.efficiency.pretrain_data.root=data/jetclass2_sim
(--config.efficiency.pretrain_data.format=parquet); an encoder pretrained elsewhere:
--config.efficiency.pretrained=runs/jetclr_pretrain (its feature set must be kin).
"""
from configs import base, efficiency


def get_config():
    c = efficiency.add_efficiency(base.get_config())
    c.data.update(dict(root="data/TopLandscape", format="h5", scheme="top_landscape", feature_set="kin",
                       epoch_size=200_000, val_size=100_000))
    c.efficiency.budgets = (100, 1_000, 10_000, 100_000)
    c.efficiency.pretrain_data.update(dict(root="data/JetClass-II", format="parquet", scheme="jetclass2_7",
                                           epoch_size=2_000_000, val_size=200_000))
    return c
