"""zstd: lossless compression of the whole body (positions, scales and codes alike).

Error bound: exact. Decoding refuses frames whose declared size differs from the body size in the
header (itself capped by what the tensors can legitimately need), so a small blob cannot expand
into a large allocation.
"""

from __future__ import annotations

import zstandard
from pydantic import Field

from .base import Bytes, PayloadError, StageParams


class ZstdParams(StageParams):
    level: int = Field(3, ge=-7, le=22, description="zstd level (higher: smaller, slower)")


class Zstd(Bytes):
    """zstd over the whole body; lossless."""

    name = "zstd"
    Params = ZstdParams
    params: ZstdParams

    def compress(self, body: bytes) -> bytes:
        return zstandard.ZstdCompressor(level=self.params.level, write_content_size=True).compress(body)

    def decompress(self, data: memoryview, size: int) -> bytes:
        try:
            declared = zstandard.get_frame_parameters(data).content_size
        except zstandard.ZstdError as exc:
            raise PayloadError(f"bad zstd frame header: {exc}") from None
        if declared != size:
            raise PayloadError(f"zstd frame declares {declared} bytes, the header {size}")
        reader = zstandard.ZstdDecompressor().decompressobj()
        try:
            out = reader.decompress(data)
        except zstandard.ZstdError as exc:
            raise PayloadError(f"corrupt zstd data: {exc}") from None
        if not reader.eof or reader.unused_data or len(out) != size:
            raise PayloadError("zstd data does not end where the frame says it does")
        return out
