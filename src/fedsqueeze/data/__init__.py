"""Data layer: sources -> examples -> partition into clients -> held-out split -> tokenized sets.

The runtime uses `build_federation` once at start and `sample_batches` every local step; both are deterministic
from the config and the seed (resume and the FedAvg-equals-centralized check rely on that).
"""

from .federation import ClientData, Federation, build_federation
from .partition import PARTITIONS, sample_batches
from .sources import load_examples
from .tokenization import IGNORE_INDEX, TokenizedSet

__all__ = [
    "IGNORE_INDEX",
    "PARTITIONS",
    "ClientData",
    "Federation",
    "TokenizedSet",
    "build_federation",
    "load_examples",
    "sample_batches",
]
