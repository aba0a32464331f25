"""The autoencoder networks. Each maps a batch of samples (see views.py) to a latent and back.

Common surface:
    sample_shape       shape of one sample, e.g. (1, 64, 64) or (64,)
    latent_sizes       latent values per sample that decode() accepts, ascending; the last is full
    encode(x)          (n, *sample_shape) -> (n, latent_sizes[-1])
    decode(z)          (n, k) -> (n, *sample_shape), k in latent_sizes (the rest of the latent is zero)
    nested             True when every prefix of the latent is trained to decode on its own, so a
                       sender can keep fewer latent values (the adaptive mode) without a new network
"""

from __future__ import annotations

import torch
from torch import nn

TILE = 64
"""Side of the square tiles the paper's network reads: 6 stride-2 convolutions take 64 -> 1."""


class _Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.LeakyReLU(0.1), nn.Conv2d(channels, channels, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class PaperConvAutoencoder(nn.Module):
    """CG-FedLLM's autoencoder as the paper describes it: six stride-2 convolutions growing the
    channels 1 -> 64 with three residual blocks, and a mirrored decoder ending in tanh.

    On a 64x64 tile the six halvings leave 64 channels x 1 x 1: the latent is 1/64 of the input.
    Where the residual blocks sit is not stated; they are at 8x8 (after the third convolution),
    the last resolution where a 3x3 kernel still sees neighbours.
    """

    channels = (8, 16, 32, 64, 64, 64)
    residual_after = 3
    sample_shape = (1, TILE, TILE)
    latent_sizes = (64,)
    nested = False

    def __init__(self, residual_blocks: int = 3):
        super().__init__()
        enc: list[nn.Module] = []
        c_in = 1
        for i, c in enumerate(self.channels, start=1):
            enc.append(nn.Conv2d(c_in, c, 4, stride=2, padding=1))
            if i < len(self.channels):
                enc.append(nn.LeakyReLU(0.1))
            if i == self.residual_after:
                enc += [_Residual(c) for _ in range(residual_blocks)]
            c_in = c
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = []
        mirrored = list(self.channels[::-1]) + [1]  # 64 64 64 32 16 8 1
        for i in range(len(self.channels)):
            c_in, c_out = mirrored[i], mirrored[i + 1]
            dec.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1))
            if i < len(self.channels) - 1:
                dec.append(nn.LeakyReLU(0.1))
            if len(self.channels) - 1 - i == self.residual_after:
                dec += [_Residual(c_out) for _ in range(residual_blocks)]
        dec.append(nn.Tanh())
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).flatten(1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z.reshape(z.shape[0], -1, 1, 1))


def row_latent_sizes(chunk: int) -> tuple[int, ...]:
    """The row network's latent ladder: chunk/32, chunk/16, ..., chunk (at least 1)."""
    return tuple(sorted({max(1, chunk >> s) for s in range(6)}))


class RowLinearAutoencoder(nn.Module):
    """A linear autoencoder over fixed-size chunks of the rank vectors (rows of A, columns of B).

    Its latent is nested: training truncates it at a random size of the ladder each batch, so the
    first k values are the best k-value code the network knows (a learned, ordered basis; PCA is
    the optimum it starts from). No biases: the code of a zero chunk is zero and scaling the input
    scales the code.
    """

    nested = True

    def __init__(self, chunk: int = 64):
        super().__init__()
        self.chunk = chunk
        self.sample_shape = (chunk,)
        self.latent_sizes = row_latent_sizes(chunk)
        self.encoder = nn.Linear(chunk, chunk, bias=False)
        self.decoder = nn.Linear(chunk, chunk, bias=False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        k = z.shape[1]
        return z @ self.decoder.weight[:, :k].T

    def init_from_pca(self, samples: torch.Tensor) -> None:
        """Encoder = leading right singular vectors of the samples (uncentred: no biases)."""
        _, _, vh = torch.linalg.svd(samples.double(), full_matrices=True)
        basis = vh[: self.chunk].float()
        with torch.no_grad():
            self.encoder.weight.copy_(basis)
            self.decoder.weight.copy_(basis.T)


ARCHES = ("paper", "row")


def build_network(arch: str, chunk: int = 64, seed: int = 0) -> nn.Module:
    """A fresh network, its initial weights drawn from `seed` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if arch == "paper":
            net = PaperConvAutoencoder()
        elif arch == "row":
            net = RowLinearAutoencoder(chunk)
        else:
            raise ValueError(f"unknown autoencoder architecture {arch!r}; allowed: {', '.join(ARCHES)}")
    return net.eval()


def half_vector(net: nn.Module, half: str) -> torch.Tensor:
    """The encoder's or the decoder's weights as one flat fp32 vector (what travels)."""
    module = getattr(net, half)
    return torch.nn.utils.parameters_to_vector([p.detach() for p in module.parameters()]).float().clone()


def load_half(net: nn.Module, half: str, flat: torch.Tensor) -> None:
    module = getattr(net, half)
    expected = sum(p.numel() for p in module.parameters())
    if flat.numel() != expected:
        raise ValueError(f"{half} weights: got {flat.numel()} values, the network has {expected}")
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(flat.float().reshape(-1), module.parameters())


def count_params(net: nn.Module, half: str) -> int:
    return sum(p.numel() for p in getattr(net, half).parameters())
