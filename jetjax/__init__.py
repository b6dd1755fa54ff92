"""jetjax: representation learning for particle jets on one ParT encoder, in JAX."""
from jetjax.memory import keep_freed_memory

__version__ = "0.1.0"
KEEPS_FREED_MEMORY = keep_freed_memory()
"""Whether malloc keeps freed memory in this process (jetjax/memory.py): XLA's CPU buffers reused, not
page-faulted anew on every step."""
