"""Fully supervised reference ParT (the study's "ParT" row): 20 epochs of 2M sampled jets, AdamW 1e-4."""
from configs import base


def get_config():
    return base.get_config()
