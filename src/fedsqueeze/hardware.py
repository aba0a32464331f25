"""Where training runs and in what precision, chosen from what the hardware itself reports.

A bf16 matmul is ~5x faster than fp32 on a CPU with native bf16 (AVX-512 BF16 / AMX) and ~7x
slower on one without (AVX2 or AVX-512 without BF16: emulated), so `auto` never assumes: it asks
oneDNN and the CPU's own flags (`cpu_has_native_bf16`), or CUDA.
`Capabilities` is a plain value so tests can inject any machine and cover every branch.
"""

from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass

import torch

from .config import DEVICE_PATTERN
from .errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Capabilities:
    cuda_devices: int = 0
    cuda_bf16: bool = False
    mps: bool = False
    cpu_bf16: bool = False
    cpu_isa: str = "unknown"

    @classmethod
    def detect(cls) -> Capabilities:
        cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
        mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
        return cls(
            cuda_devices=cuda,
            cuda_bf16=bool(cuda and torch.cuda.is_bf16_supported()),
            mps=mps,
            cpu_bf16=cpu_has_native_bf16(),
            cpu_isa=str(torch.backends.cpu.get_cpu_capability()),
        )

    def available(self) -> str:
        found = (
            ["cpu"]
            + ([f"cuda:0..{self.cuda_devices - 1}"] if self.cuda_devices else [])
            + (["mps"] if self.mps else [])
        )
        return ", ".join(found)


def cpu_has_native_bf16() -> bool:
    """oneDNN's own check is also true on AVX-512 *without* the BF16 extension, where it emulates
    bf16 (2.3x slower than fp32 on such a Xeon, benchmarks/precision_pair.sh): on x86 the
    instructions themselves must be there too. oneDNN's check stays, so `ONEDNN_MAX_CPU_ISA=AVX2`
    still says no."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        return _onednn_bf16() and _x86_bf16_instructions()
    return _onednn_bf16()


def _onednn_bf16() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _x86_bf16_instructions() -> bool:
    """AVX512_BF16 or AMX, as cpuinfo reads them (torch.cpu; absent in old torch: then fp32)."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def resolve_device(spec: str, caps: Capabilities) -> torch.device:
    if not DEVICE_PATTERN.match(spec):
        raise ConfigError(f"config key 'train.device': {spec!r} is not a device; allowed: auto, cpu, cuda, cuda:N, mps")
    if spec == "auto":
        return torch.device("cuda:0" if caps.cuda_devices else "mps" if caps.mps else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        index = device.index or 0
        if index >= caps.cuda_devices:
            raise ConfigError(
                f"config key 'train.device': {spec!r} is not on this machine (it has: {caps.available()})"
            )
        return torch.device("cuda", index)
    if device.type == "mps" and not caps.mps:
        raise ConfigError(f"config key 'train.device': 'mps' is not on this machine (it has: {caps.available()})")
    return device


def resolve_precision(spec: str, device: torch.device, caps: Capabilities) -> tuple[str, str]:
    """The training precision and why it was chosen (for the console header)."""
    if spec != "auto":
        if spec == "fp16" and device.type == "cpu":
            raise ConfigError(
                "config key 'train.precision': 'fp16' needs a GPU (CPUs have no fast fp16 path); "
                "allowed on cpu: auto, fp32, bf16"
            )
        return spec, "as configured"
    if device.type == "cuda":
        return ("bf16", "CUDA bf16") if caps.cuda_bf16 else ("fp16", "no bf16 on this GPU: fp16 + loss scaling")
    if device.type == "mps":
        return "fp32", "MPS: mixed precision not assumed"
    if caps.cpu_bf16:
        return "bf16", f"native bf16 on this CPU ({caps.cpu_isa})"
    return "fp32", f"no native bf16 on this CPU ({caps.cpu_isa})"


def resolve_model_dtype(spec: str, device: torch.device, precision: str) -> torch.dtype:
    """Frozen base weights: the training precision on a GPU (half the memory), fp32 on a CPU
    (autocast computes in bf16 where that is native, and fp32 weights keep fp32 runs exact)."""
    if spec != "auto":
        return DTYPES[spec]
    return DTYPES[precision] if device.type != "cpu" else torch.float32


@dataclass(frozen=True)
class Placement:
    """Resolved device, precision and base-weight dtype of one process's model."""

    device: torch.device
    precision: str
    model_dtype: torch.dtype
    reason: str = ""

    @classmethod
    def resolve(
        cls, device: str = "auto", precision: str = "auto", model_dtype: str = "auto", caps: Capabilities | None = None
    ) -> Placement:
        caps = caps or Capabilities.detect()
        dev = resolve_device(device, caps)
        prec, reason = resolve_precision(precision, dev, caps)
        return cls(dev, prec, resolve_model_dtype(model_dtype, dev, prec), reason)

    @classmethod
    def cpu_fp32(cls) -> Placement:
        return cls(torch.device("cpu"), "fp32", torch.float32, "as configured")

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.precision])

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none."""
        if self.precision == "fp16" and self.device.type == "cuda":
            return torch.amp.GradScaler("cuda")
        return None

    def batch(self, batch: dict) -> dict:
        if self.device.type == "cpu":
            return batch
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def describe(self) -> str:
        weights = str(self.model_dtype).removeprefix("torch.")
        return f"device {self.device} | precision {self.precision} ({self.reason}) | base weights {weights}"
