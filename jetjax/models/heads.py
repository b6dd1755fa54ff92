"""Heads attached to the ParT jet representation z."""
import flax.linen as nn
import jax.numpy as jnp

torch_linear_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


class Classifier(nn.Module):
    """Classifier on z: 'linear' (the ParT reference) or 'mlp' (the study's 2-layer head:
    Dense -> GELU -> Dropout -> Dense, PART_SPEC §8.3)."""

    num_classes: int
    kind: str = "linear"
    hidden: int = 256
    dropout: float = 0.1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z, train: bool = False):
        if self.kind == "mlp":
            z = nn.Dense(self.hidden, dtype=self.dtype, kernel_init=torch_linear_init, name="hidden")(z)
            z = nn.Dropout(self.dropout)(nn.gelu(z, approximate=False), deterministic=not train)
        elif self.kind != "linear":
            raise ValueError(f"model.head must be 'linear' or 'mlp', got {self.kind!r}")
        return nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=torch_linear_init, name="out")(z)
