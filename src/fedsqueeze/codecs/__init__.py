"""Codecs: tensors in, bytes out, and back. They never see clients, rounds or the network.

Public surface used by the rest of fedsqueeze:
    build_codec(spec, layout, limits=None) -> Codec
    Codec.encode(tensors) -> bytes; Codec.decode(blob) -> tensors (float32, CPU, exactly the keys sent)
    Codec.encode_and_reconstruct(tensors) -> (bytes, what decode will return)
    Codec.state_dict() / load_state_dict()    seeded counters, lowrank's warm-start Q
    Sender(codec, error_feedback)             per-peer sending end; keeps error-feedback memory
    PayloadError                              the one exception decode raises for a malformed blob
    Limits(max_blob_bytes, max_elements)      ceilings a blob's declarations must stay under
    measure(codec, tensors) / blob_stats(...) raw/wire bytes, ratio (wire / raw), rel. error, seconds
    bench.run_bench(update, layout, configs)  one row per codec configuration

Spec grammar: stages joined by ">", each `name` or `name(key=value, ...)`, in the order
sparsifier / low-rank > value encoding > byte compression (each optional, at most one of each):

    structure  topk(fraction|k, scope)  randk(fraction|k, seed, scale)  lowrank(rank, iterations, seed)
               sparse  seeded           (default: every value)
    values     fp32  fp16  bf16  narrow  grid(bits)  quantize(bits, block, rounding, seed)   (default: fp32)
    bytes      zstd(level)

e.g. "topk(fraction=0.01) > quantize(bits=8) > zstd". Each stage's module states its error bound.
"""

# A new stage is one file plus one line in registry.py's CODECS catalog; stages import on first use.
from .base import CODECS, PayloadError
from .chain import Codec, build_codec
from .sender import Sender
from .stats import blob_stats, measure
from .wire import Limits, Message, message_tensors, read_message

__all__ = [
    "CODECS",
    "Codec",
    "Limits",
    "Message",
    "PayloadError",
    "Sender",
    "blob_stats",
    "build_codec",
    "measure",
    "message_tensors",
    "read_message",
]
