"""The autoencoder networks. Each maps a batch of samples (see views.py) to a latent and back.

Common surface:
    sample_shape       shape of one sample, e.g. (1, 64, 64) or (64,)
    latent_sizes       latent values per sample that decode() accepts, ascending; the last is full
    encode(x, unit)    (n, *sample_shape) -> (n, latent_sizes[-1]); `unit` (index of the view's unit)
                       matters only to per_unit networks, which hold one set of weights per tensor
    decode(z, unit)    (n, k) -> (n, *sample_shape), k in latent_sizes (the rest of the latent is zero)
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

    per_unit = False

    def encode(self, x: torch.Tensor, unit: int | None = None) -> torch.Tensor:
        return self.encoder(x).flatten(1)

    def decode(self, z: torch.Tensor, unit: int | None = None) -> torch.Tensor:
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
    per_unit = False

    def __init__(self, chunk: int = 64):
        super().__init__()
        self.chunk = chunk
        self.sample_shape = (chunk,)
        self.latent_sizes = row_latent_sizes(chunk)
        self.encoder = nn.Linear(chunk, chunk, bias=False)
        self.decoder = nn.Linear(chunk, chunk, bias=False)

    def encode(self, x: torch.Tensor, unit: int | None = None) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor, unit: int | None = None) -> torch.Tensor:
        k = z.shape[1]
        return z @ self.decoder.weight[:, :k].T

    def init_from_pca(self, samples: dict[int, torch.Tensor]) -> None:
        """Encoder = leading right singular vectors of all samples (uncentred: no biases)."""
        basis = _principal_rows(torch.cat(list(samples.values())), self.chunk)
        with torch.no_grad():
            self.encoder.weight.copy_(basis)
            self.decoder.weight.copy_(basis.T)


class TensorLinearAutoencoder(nn.Module):
    """One linear autoencoder per adapter tensor over its whole rank vectors (rows of A, columns
    of B), with tied weights: decoder = encoder^T, so only the encoder travels.

    Why: a LoRA tensor's rank vectors keep moving in much the same few directions from round to
    round (a few directions learned from the TGAP rounds hold much of later rounds' update energy;
    see BENCHMARKS), while within a chunk the values look like noise. The latent is nested
    (ordered by PCA, kept so by training at random truncations).
    """

    nested = True
    per_unit = True

    def __init__(self, lengths: list[int], basis: int = 8):
        super().__init__()
        self.basis = basis
        self.sample_shape = None  # one vector length per unit
        self.latent_sizes = tuple(sorted({1 << s for s in range(basis.bit_length()) if 1 << s < basis} | {basis}))
        self.encoder = nn.ParameterList(
            [nn.Parameter(torch.linalg.qr(torch.randn(length, basis)).Q.T.contiguous()) for length in lengths]
        )
        self.decoder = nn.Module()  # tied: no weights of its own

    def encode(self, x: torch.Tensor, unit: int | None = None) -> torch.Tensor:
        return x @ self.encoder[unit].T

    def decode(self, z: torch.Tensor, unit: int | None = None) -> torch.Tensor:
        return z @ self.encoder[unit][: z.shape[1]]

    def init_from_pca(self, samples: dict[int, torch.Tensor]) -> None:
        with torch.no_grad():
            for unit, x in samples.items():
                self.encoder[unit].copy_(_principal_rows(x, self.basis, fill=self.encoder[unit]))


def _principal_rows(x: torch.Tensor, k: int, fill: torch.Tensor | None = None) -> torch.Tensor:
    """The k leading right singular vectors of x as rows; when x has rank < k, the rest are the
    `fill` rows (or arbitrary unit vectors) made orthogonal to them."""
    _, s, vh = torch.linalg.svd(x.reshape(len(x), -1).double(), full_matrices=True)
    rank = int((s > s[0] * 1e-9).sum()) if s.numel() and s[0] > 0 else 0
    if rank >= k:
        return vh[:k].float()
    extra = (fill if fill is not None else torch.eye(k, vh.shape[1])).double()
    q = torch.linalg.qr(torch.cat([vh[:rank], extra]).T).Q.T  # Gram-Schmidt keeps the leading rows
    return q[:k].float()


ARCHES = ("paper", "row", "tensor")


def build_network(
    arch: str, chunk: int = 64, seed: int = 0, lengths: list[int] | None = None, basis: int = 8
) -> nn.Module:
    """A fresh network, its initial weights drawn from `seed` without touching the global RNG.
    `lengths` (the rank-vector length of each unit) and `basis` are for arch="tensor"."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if arch == "paper":
            net = PaperConvAutoencoder()
        elif arch == "row":
            net = RowLinearAutoencoder(chunk)
        elif arch == "tensor":
            net = TensorLinearAutoencoder(lengths or [], basis)
        else:
            raise ValueError(f"unknown autoencoder architecture {arch!r}; allowed: {', '.join(ARCHES)}")
    return net.eval()


def half_vector(net: nn.Module, half: str) -> torch.Tensor:
    """The encoder's or the decoder's weights as one flat fp32 vector (what travels)."""
    params = [p.detach().reshape(-1) for p in getattr(net, half).parameters()]
    return torch.cat(params).float().clone() if params else torch.zeros(0)


def load_half(net: nn.Module, half: str, flat: torch.Tensor) -> None:
    module = getattr(net, half)
    expected = sum(p.numel() for p in module.parameters())
    if flat.numel() != expected:
        raise ValueError(f"{half} weights: got {flat.numel()} values, the network has {expected}")
    if expected:
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(flat.float().reshape(-1), module.parameters())


def count_params(net: nn.Module, half: str) -> int:
    return sum(p.numel() for p in getattr(net, half).parameters())
