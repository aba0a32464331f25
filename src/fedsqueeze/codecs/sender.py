"""The sending end of a link: a codec plus optional error-feedback memory (kept per peer)."""

from __future__ import annotations

import torch

from ..tensors import Tensors
from .base import Codec


class Sender:
    """Encodes for one peer. With error feedback, what the codec lost last time is added to the
    next input (memory = input + memory - decoded), so the sum of what arrives tracks the sum sent."""

    def __init__(self, codec: Codec, error_feedback: bool = False):
        self.codec = codec
        self.error_feedback = error_feedback and not codec.lossless
        self.memory: Tensors = {}

    def encode(self, tensors: Tensors) -> bytes:
        if not self.error_feedback:
            return self.codec.encode(tensors)
        corrected = {k: v + self.memory[k] if k in self.memory else v for k, v in tensors.items()}
        blob = self.codec.encode(corrected)
        decoded = self.codec.decode(blob)
        self.memory = {k: v - decoded.get(k, torch.zeros_like(v)) for k, v in corrected.items()}
        return blob

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"memory/{k}": v for k, v in self.memory.items()}
        state.update({f"codec/{k}": v for k, v in self.codec.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.memory = {k[len("memory/"):]: v.clone() for k, v in state.items() if k.startswith("memory/")}
        self.codec.load_state_dict({k[len("codec/"):]: v for k, v in state.items() if k.startswith("codec/")})
