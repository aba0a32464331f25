"""TGAP: the snapshot pool and the autoencoder's training on it.

The pool holds every client's uncompressed update of every TGAP round (the "temporal ensemble":
snapshots over rounds from all clients). The runtime hands a method one update per client per
round, so snapshots within a round's local steps are not available; each update is instead cut
into many samples (tiles or chunks, views.py), which is what the network trains on.

Everything here is a function of the snapshots and the seed: the same pool and seed give the same
samples, the same order and the same weights.
"""

from __future__ import annotations

import time

import torch

from ..tensors import Tensors
from .compressor import Compressor
from .snr import snr_db


class SnapshotPool:
    def __init__(self) -> None:
        self.snapshots: dict[tuple[int, int], Tensors] = {}

    def add(self, rnd: int, client: int, update: Tensors) -> None:
        self.snapshots[(rnd, client)] = {k: v.detach().float().clone() for k, v in update.items()}

    def __len__(self) -> int:
        return len(self.snapshots)

    def clear(self) -> None:
        self.snapshots.clear()

    def samples(self, compressor: Compressor) -> torch.Tensor:
        """All snapshots' normalized samples, in (round, client) order."""
        parts = [compressor.samples(self.snapshots[key]) for key in sorted(self.snapshots)]
        return torch.cat(parts) if parts else torch.zeros(0, *compressor.net.sample_shape)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{rnd}/{client}/{name}": t for (rnd, client), upd in self.snapshots.items() for name, t in upd.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.snapshots = {}
        for key, t in state.items():
            rnd, client, name = key.split("/", 2)
            self.snapshots.setdefault((int(rnd), int(client)), {})[name] = t.clone()


def train_autoencoder(net: torch.nn.Module, samples: torch.Tensor, *, epochs: int, lr: float, batch_size: int,
                      seed: int, max_samples: int | None = None, pca_init: bool = True,
                      eval_latent: int | None = None) -> dict:
    """MSE + Adam on the samples (seeded subsample, order and nested truncation); returns metrics.

    A nested network (the row one) draws, per batch, the latent size it trains at, so every prefix
    of the latent learns to decode; with pca_init it starts from the samples' principal basis.
    ae_pool_snr_db: the trained network's SNR on its own training samples at `eval_latent` values
    per sample (default: the full latent), before any latent quantization."""
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    if max_samples is not None and len(samples) > max_samples:
        samples = samples[torch.randperm(len(samples), generator=g)[:max_samples]]
    metrics = {"ae_samples": len(samples)}
    if len(samples) == 0:
        return metrics
    if pca_init and hasattr(net, "init_from_pca"):
        net.init_from_pca(samples.reshape(len(samples), -1))
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    sizes = net.latent_sizes
    net.train()
    loss_sum = 0.0
    for _ in range(epochs):
        order = torch.randperm(len(samples), generator=g)
        loss_sum, batches = 0.0, 0
        for start in range(0, len(samples), batch_size):
            x = samples[order[start : start + batch_size]]
            z = net.encode(x)
            if net.nested:
                z = z[:, : sizes[int(torch.randint(len(sizes), (1,), generator=g))]]
            loss = torch.nn.functional.mse_loss(net.decode(z), x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach())
            batches += 1
        loss_sum /= max(batches, 1)
    net.eval()
    with torch.no_grad():
        x = samples
        rebuilt = net.decode(net.encode(x)[:, : eval_latent or sizes[-1]])
        noise = float(((x - rebuilt) ** 2).sum())
    metrics.update({"ae_train_loss": loss_sum, "ae_pool_snr_db": snr_db(float((x**2).sum()), noise),
                    "ae_train_seconds": time.perf_counter() - t0})
    return metrics
