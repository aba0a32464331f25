"""Codec interface and registry (placeholder wire format: safetensors bytes; replaced by the codec library)."""

from __future__ import annotations

from typing import ClassVar

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..registry import Registry
from ..tensors import Layout, Tensors


class PayloadError(ValueError):
    """A blob that cannot be decoded safely (truncated, corrupt, lying about sizes, wrong layout)."""


class Codec:
    name: ClassVar[str]
    lossless: ClassVar[bool] = False

    def __init__(self, layout: Layout):
        self.layout = layout

    def encode(self, tensors: Tensors) -> bytes:
        raise NotImplementedError

    def decode(self, blob: bytes) -> Tensors:
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass


CODECS: Registry[type[Codec]] = Registry("codec")


@CODECS.register("fp32")
class FP32(Codec):
    name = "fp32"
    lossless = True

    def encode(self, tensors: Tensors) -> bytes:
        return st_save({k: v.detach().float().contiguous() for k, v in tensors.items()})

    def decode(self, blob: bytes) -> Tensors:
        try:
            return dict(st_load(bytes(blob)))
        except Exception as exc:  # safetensors raises several types
            raise PayloadError(f"cannot decode fp32 payload: {exc}") from None


def build_codec(spec: str, layout: Layout) -> Codec:
    return CODECS.get(spec.strip())(layout)
