"""The representation-learning study on jets simulated locally with Pythia 8 + FastJet (no download).

Make the data set first (about 3 (di-tau classes) to 40 jets per CPU second per class, see README):
    pip install -e ".[sim]"
    python -m jetjax.data.simulate --out data/jetclass2_sim --jets-per-class 10000 --seed 0 --workers 8
then run the study on it:
    python -m jetjax.main --config configs/study_sim.py [--config.data.root=DIR]
"""
import ml_collections


def get_config():
    """Study mode on the simulated JetClass-II-format parquet files of `jetjax.data.simulate`.

    The study's own settings (objectives, model, optimiser, schedule) come from configs/base.py once it
    exists; this file then only overrides the data source below.
    """
    config = ml_collections.ConfigDict()
    config.mode = "study"
    config.data = ml_collections.ConfigDict()
    config.data.root = "data/jetclass2_sim"   # --out of jetjax.data.simulate: holds train/, val/, test/
    config.data.format = "parquet"
    config.data.scheme = "jetclass2_7"         # jetjax.data.classes.SCHEMES: the study's 7-class task
    return config
