"""Codecs: tensors in, bytes out, and back. They never see clients, rounds or the network.

Public surface used by the rest of fedsqueeze:
    build_codec(spec, layout) -> Codec        spec: "fp32" or a chain "topk(fraction=0.01) > quantize(bits=8) > zstd"
    Codec.encode(tensors) -> bytes; Codec.decode(blob) -> tensors
    Sender(codec, error_feedback)             per-peer sending end; keeps error-feedback memory
    PayloadError                              raised by decode for any malformed blob
"""

from .base import CODECS, Codec, PayloadError, build_codec
from .sender import Sender

__all__ = ["CODECS", "Codec", "PayloadError", "Sender", "build_codec"]
