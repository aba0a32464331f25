"""The sending end of a link: a codec plus optional error-feedback memory (kept per peer).

As in GRACE, the memory is not part of the compressor: any lossy codec gets error feedback by being
wrapped here, and the codec stays a pure function of its input (and its own seeded state).
"""

from __future__ import annotations

import torch

from ..tensors import Tensors, clone, prefixed, unprefixed
from .chain import Codec


class Sender:
    """Encodes for one peer. With error feedback, what the codec lost is added to the next input
    (memory = input + memory - decoded), so that for every tensor name

        sum of inputs == sum of what the peer decoded + memory        (up to float rounding)

    Memory of a name that a message leaves out is kept for the next message that carries it.

    Behind a structure that sends the input's own support (sparse, seeded: the method chose the
    positions), memory is added only where the input is non-zero: added everywhere, it would make
    every position ever sent non-zero again and the upload denser each round. The rest waits until
    the method picks that position again; the identity above still holds, and each memory entry is
    the value stage's error of the last message that carried it.
    """

    def __init__(self, codec: Codec, error_feedback: bool = False):
        self.codec = codec
        self.error_feedback = error_feedback and not codec.lossless
        self.memory: Tensors = {}
        self.last_received: Tensors | None = None
        """What the peer decodes from the last blob (lossy codecs only; None when lossless)."""

    def encode(self, tensors: Tensors) -> bytes:
        if not self.error_feedback:
            if self.codec.lossless:
                return self.codec.encode(tensors)
            blob, self.last_received = self.codec.encode_and_reconstruct(tensors)
            return blob
        corrected, held = {}, {}
        support = self.codec.structure.keeps_support
        for name, t in tensors.items():
            t = t.detach().to(device="cpu", dtype=torch.float32)
            residual = self.memory.get(name)
            if residual is not None and residual.shape != t.shape:
                raise ValueError(f"tensor {name!r} changed shape {tuple(residual.shape)} -> {tuple(t.shape)}")
            if residual is not None and support:
                zero, chosen = torch.zeros((), dtype=residual.dtype), t != 0
                held[name] = torch.where(chosen, zero, residual)
                residual = torch.where(chosen, residual, zero)
            corrected[name] = t + residual if residual is not None else t
        # The codec hands back what the peer will decode, so no second decode is needed.
        blob, decoded = self.codec.encode_and_reconstruct(corrected)
        self.last_received = decoded
        for name, t in corrected.items():
            memory = t - decoded[name]
            self.memory[name] = memory + held[name] if name in held else memory
        return blob

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {**prefixed("memory/", self.memory), **prefixed("codec/", self.codec.state_dict())}
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.memory = clone(unprefixed("memory/", state))
        self.codec.load_state_dict(unprefixed("codec/", state))
