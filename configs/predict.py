"""Scores of a trained classifier for new files (jetjax.predict):

    python -m jetjax.main --config configs/predict.py --config.predict.run=runs/quickstart \
        --config.predict.files='new/*.parquet' --config.predict.out=runs/quickstart/scores.parquet

The model, its feature set, particle slots and task come from the run, and so do, by default, the way its files
were read (config.data.columns, data.tree, data.format of the run): give only what differs in the new files,
e.g. --config.data.columns.part_px=px or --config.data.tree=Events.
"""
import ml_collections
from ml_collections import config_dict

from configs import base


def get_config():
    c = base.get_config()
    c.mode = "predict"
    c.data = base.unset_like(c.data)  # unset: as the trained run read its files
    c.predict = ml_collections.ConfigDict(dict(
        run=config_dict.placeholder(str),     # the trained classifier's workdir (its best checkpoint is used)
        files=config_dict.placeholder(str),   # input files: paths or globs, comma-separated
        out=config_dict.placeholder(str),     # output: .parquet, or .root (tree 'predictions')
        carry=(),                             # input columns (one value per jet) copied to the output
        embeddings=False,                     # also write the representation z_0 ... z_{E-1}
        batch_size=config_dict.placeholder(int),  # default: the run's train.batch_size
        chunk_size=4096,                      # jets read, scored and written at a time
    ))
    return c
