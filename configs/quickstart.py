"""Quickstart: a tiny ParT on synthetic jets of the study's 7 classes, minutes on a CPU laptop."""
import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.mode = "supervised"
    config.data = ml_collections.ConfigDict(dict(num_features=7, num_particles=64))
    config.model = ml_collections.ConfigDict(dict(
        num_classes=7, embed_dims=(32, 64, 32), pair_embed_dims=(16, 16), num_heads=4, num_layers=2,
        num_cls_layers=1, dtype="float32"))
    return config
