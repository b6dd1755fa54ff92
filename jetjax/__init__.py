"""jetjax: representation learning for particle jets on one ParT encoder, in JAX."""
__version__ = "0.1.0"
