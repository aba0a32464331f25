"""Autoencoders for LoRA updates (CG-FedLLM): networks, the update <-> latent compressor, the TGAP
snapshot pool and training, and SNR. Used by strategies/cg_fedllm.py and codecs/autoencoder.py."""

from .compressor import Compressor, Encoded, MalformedUpload
from .networks import ARCHES, build_network, count_params, half_vector, load_half
from .pool import SnapshotPool, train_autoencoder
from .snr import layer_snr_db, snr_db
from .views import build_view

__all__ = [
    "ARCHES",
    "Compressor",
    "Encoded",
    "MalformedUpload",
    "SnapshotPool",
    "build_network",
    "build_view",
    "count_params",
    "half_vector",
    "layer_snr_db",
    "load_half",
    "snr_db",
    "train_autoencoder",
]
