""""Ours" trained with Muon (the study's §2.3): Muon (lr 0.02, momentum 0.95, Nesterov) on the blocks' hidden
matrices, AdamW (lr 1e-4, the study's) on everything else, same schedule."""
from configs import supervised_ours

MUON_LEARNING_RATE = 0.02


def get_config():
    c = supervised_ours.get_config()
    c.optimizer.name = "muon"
    c.optimizer.muon_learning_rate = MUON_LEARNING_RATE
    return c
