"""Codecs: tensors in, bytes out, and back. They never see clients, rounds or the network.

Public surface used by the rest of fedsqueeze:
    build_codec(spec, layout) -> Codec        spec: "fp32" or a chain "topk(fraction=0.01) > quantize(bits=8) > zstd"
    Codec.encode(tensors) -> bytes; Codec.decode(blob) -> tensors
    Sender(codec, error_feedback)             per-peer sending end; keeps error-feedback memory
    PayloadError                              raised by decode for any malformed blob
    measure / blob_stats                      bytes, ratio, relative error and timings of a blob
"""

# Each stage module registers itself in CODECS on import: a new codec is one file plus its name here.
from . import autoencoder, bf16, fp16, fp32, lowrank, quantize, randk, sparse, topk, zstd  # noqa: F401
from .base import CODECS, PayloadError
from .chain import Codec, build_codec
from .sender import Sender
from .stats import blob_stats, measure
from .wire import Limits

__all__ = ["CODECS", "Codec", "Limits", "PayloadError", "Sender", "blob_stats", "build_codec", "measure"]
