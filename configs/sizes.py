"""One supervised run of a size of the model ladder (jetjax/models/sizes.py: micro, mini, part = the reference
ParT, s, m, l, xl up to ~200M parameters):

    python -m jetjax.main --config configs/sizes.py:m --config.data.root=...
"""
from configs import base
from jetjax.models.sizes import with_size


def get_config(name="part"):
    return with_size(base.get_config(), name)
