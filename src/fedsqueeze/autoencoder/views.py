"""How a LoRA update becomes autoencoder samples and back.

A *unit* is what the sender normalizes, encodes and (in the adaptive mode) accepts or rejects as
one piece: one LoRA layer (its A and B together) for the paper's network, one tensor for the
row network. Both ends derive the units from tensor names and shapes alone, so none of this costs
bytes.

PaperTiles: the paper's "image" of a layer is [A^T | B] (d_in x r next to d_out x r; the shorter
one padded with zero rows). A 6-stride-2 network needs sides that are multiples of 64, and a LoRA
image is tall and thin (2r columns), so consecutive rows are folded side by side until the width
reaches 64 (row-major reshape), then the image is zero-padded to whole 64x64 tiles. Padding means
the latent is 1/64 of the padded image: on wide models that is close to 1/64 of the update
(SmolLM2-135M, r=16: 1/57.6); on the tiny test model it is about 1/8 to 1/12.

RowChunks: the rank vectors of each tensor (rows of A, columns of B: the directions LoRA writes
and reads) cut into fixed-size chunks, the last one zero-padded; with chunk=None (arch=tensor)
the whole vectors, one length per tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .networks import TILE

A_SUFFIX = ".lora_A.weight"
B_SUFFIX = ".lora_B.weight"


@dataclass(frozen=True)
class Unit:
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]


def layer_units(names, shapes) -> list[Unit]:
    """One unit per LoRA layer (A with its B), in order of first appearance; a tensor without its
    partner is a unit of its own."""
    shape_of = dict(zip(names, map(tuple, shapes)))
    units, seen = [], set()
    for name in names:
        if name in seen:
            continue
        partner = None
        if name.endswith(A_SUFFIX):
            partner = name[: -len(A_SUFFIX)] + B_SUFFIX
        elif name.endswith(B_SUFFIX):
            partner = name[: -len(B_SUFFIX)] + A_SUFFIX
        if partner in shape_of and partner not in seen:
            a, b = (name, partner) if name.endswith(A_SUFFIX) else (partner, name)
            units.append(Unit((a, b), (shape_of[a], shape_of[b])))
            seen.update((a, b))
        else:
            units.append(Unit((name,), (shape_of[name],)))
            seen.add(name)
    return units


def tensor_units(names, shapes) -> list[Unit]:
    return [Unit((n,), (tuple(s),)) for n, s in zip(names, shapes)]


def _as_matrix(name: str, t: torch.Tensor) -> torch.Tensor:
    """The tensor as rows of rank vectors: A stays r x d_in, B becomes r x d_out (its columns)."""
    m = t.reshape(t.shape[0], -1) if t.dim() >= 2 else t.reshape(1, -1)
    return m.T if name.endswith(B_SUFFIX) else m


def _from_matrix(name: str, m: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    if name.endswith(B_SUFFIX):
        m = m.T
    return m.reshape(shape)


class PaperTiles:
    """Units = LoRA layers; samples = 64x64 tiles of the folded [A^T | B] image."""

    def __init__(self, names, shapes):
        self.units = layer_units(names, shapes)

    @staticmethod
    def _block_dims(name: str, shape: tuple[int, ...]) -> tuple[int, int]:
        """(rows, cols) a tensor takes in the image: A^T is d_in x r, B is d_out x r."""
        rows = shape[0] if len(shape) >= 2 else 1
        cols = math.prod(shape) // max(rows, 1)
        return (cols, rows) if name.endswith(A_SUFFIX) else (rows, cols)

    def geometry(self, unit: Unit) -> tuple[int, int, int, int, int]:
        """(height, width, fold, tile rows, tile cols) of a unit's image."""
        dims = [self._block_dims(n, s) for n, s in zip(unit.names, unit.shapes)]
        height = max(r for r, _ in dims)
        width = sum(c for _, c in dims)
        fold = 1 if width >= TILE else 1 << math.ceil(math.log2(TILE / width))
        folded_h = math.ceil(height / fold)
        return height, width, fold, math.ceil(folded_h / TILE), math.ceil(width * fold / TILE)

    def samples_per_unit(self, unit: Unit) -> int:
        _, _, _, tr, tc = self.geometry(unit)
        return tr * tc

    def to_samples(self, unit: Unit, parts: list[torch.Tensor]) -> torch.Tensor:
        height, width, fold, tr, tc = self.geometry(unit)
        image = torch.zeros(tr * TILE * fold, width)
        col = 0
        for name, t in zip(unit.names, parts):
            rows, cols = self._block_dims(name, tuple(t.shape))
            block = t.reshape(cols, rows).T if name.endswith(A_SUFFIX) else t.reshape(rows, cols)
            image[:rows, col : col + cols] = block
            col += cols
        folded = image.reshape(tr * TILE, fold * width)
        padded = torch.zeros(tr * TILE, tc * TILE)
        padded[:, : fold * width] = folded
        return padded.reshape(tr, TILE, tc, TILE).permute(0, 2, 1, 3).reshape(tr * tc, 1, TILE, TILE)

    def from_samples(self, unit: Unit, tiles: torch.Tensor) -> list[torch.Tensor]:
        height, width, fold, tr, tc = self.geometry(unit)
        padded = tiles.reshape(tr, tc, TILE, TILE).permute(0, 2, 1, 3).reshape(tr * TILE, tc * TILE)
        image = padded[:, : fold * width].reshape(tr * TILE * fold, width)
        parts, col = [], 0
        for name, shape in zip(unit.names, unit.shapes):
            rows, cols = self._block_dims(name, shape)
            block = image[:rows, col : col + cols]
            col += cols
            parts.append((block.T if name.endswith(A_SUFFIX) else block).reshape(shape).contiguous())
        return parts


class RowChunks:
    """Units = tensors; samples = fixed-size chunks of their rank vectors (chunk=None: whole vectors)."""

    def __init__(self, names, shapes, chunk: int | None):
        self.units = tensor_units(names, shapes)
        self.chunk = chunk

    def vector_length(self, unit: Unit) -> int:
        return self._matrix_shape(unit)[1]

    def _chunk(self, unit: Unit) -> int:
        return self.chunk or self.vector_length(unit)

    def _matrix_shape(self, unit: Unit) -> tuple[int, int]:
        name, shape = unit.names[0], unit.shapes[0]
        rows = shape[0] if len(shape) >= 2 else 1
        cols = math.prod(shape) // max(rows, 1)
        return (cols, rows) if name.endswith(B_SUFFIX) else (rows, cols)

    def samples_per_unit(self, unit: Unit) -> int:
        vectors, length = self._matrix_shape(unit)
        return vectors * math.ceil(length / self._chunk(unit))

    def to_samples(self, unit: Unit, parts: list[torch.Tensor]) -> torch.Tensor:
        m = _as_matrix(unit.names[0], parts[0])
        vectors, length = m.shape
        chunk = self._chunk(unit)
        padded = torch.zeros(vectors, math.ceil(length / chunk) * chunk)
        padded[:, :length] = m
        return padded.reshape(-1, chunk)

    def from_samples(self, unit: Unit, chunks: torch.Tensor) -> list[torch.Tensor]:
        vectors, length = self._matrix_shape(unit)
        m = chunks.reshape(vectors, -1)[:, :length]
        return [_from_matrix(unit.names[0], m, unit.shapes[0]).contiguous()]


def build_view(arch: str, names, shapes, chunk: int = 64):
    if arch == "paper":
        return PaperTiles(names, shapes)
    return RowChunks(names, shapes, None if arch == "tensor" else chunk)
