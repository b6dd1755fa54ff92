"""The study on jets simulated locally with Pythia 8 + FastJet (no download).

Make the data set first (about 3 (di-tau classes) to 40 jets per CPU second per class, see README):
    pip install -e ".[sim]"
    python -m jetjax.data.simulate --out data/jetclass2_sim --jets-per-class 10000 --seed 0 --workers 8
then run the study on it:
    python -m jetjax.main --config configs/study_sim.py [--config.data.root=DIR] [--workdir runs/study_sim]

The study's settings (configs/study.py) with epochs sized to such a set: 50k sampled jets per epoch (about
one pass over the 56k training jets of 10k jets per class), balanced validation on 5k jets.
"""
from configs import study


def with_sim_data(c):
    """`c` reading the simulated set: its folder, format and epochs sized to it."""
    c.data.root = "data/jetclass2_sim"   # --out of jetjax.data.simulate: holds train/, val/, test/
    c.data.format = "parquet"
    c.data.epoch_size = 50_000
    c.data.val_size = 5_000
    return c


def get_config():
    return with_sim_data(study.get_config())
