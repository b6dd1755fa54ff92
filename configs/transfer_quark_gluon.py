"""Transfer to quark/gluon tagging: a JetCLR encoder pretrained on JetClass-II with particle ID (kinpid: the
quark-gluon files give the PDG id), then the data-efficiency study (jetjax.efficiency) on energyflow's Pythia
quark-gluon sample (uds quarks against gluons), 10^2..10^5 labelled jets. Measures what JetClass-II
pretraining (boosted R = 0.8 jets, CMS-like detector) is worth on generator-level anti-kT R = 0.4 jets of
pT 500-550 GeV, a task decided by the radiation pattern rather than by prongs.

    python -m jetjax.data.fetch JetClass-II --out data --parts study
    python -m jetjax.data.fetch QuarkGluon --out data
    python -m jetjax.main --config configs/transfer_quark_gluon.py [--workdir runs/transfer_quark_gluon]

Pretrained on simulated jets instead: --config.efficiency.pretrain_data.root=data/jetclass2_sim.
"""
from configs import base, efficiency


def get_config():
    c = efficiency.add_efficiency(base.get_config())
    c.data.update(dict(root="data/QuarkGluon", format="npz", scheme="quark_gluon", feature_set="kinpid",
                       epoch_size=200_000, val_size=100_000))
    c.efficiency.budgets = (100, 1_000, 10_000, 100_000)
    c.efficiency.pretrain_data.update(dict(root="data/JetClass-II", format="parquet", scheme="jetclass2_7",
                                           epoch_size=2_000_000, val_size=200_000))
    return c
