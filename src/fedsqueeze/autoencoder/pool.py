"""TGAP: the snapshot pool and the autoencoder's training on it.

The pool holds every client's uncompressed update of every TGAP round (the "temporal ensemble":
snapshots over rounds from all clients) and, when the method asks for them, the same update at
earlier local steps of the round (step > 0; step 0 is the round's update). Each snapshot is cut
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
        self.snapshots: dict[tuple[int, int, int], Tensors] = {}

    def add(self, rnd: int, client: int, update: Tensors, step: int = 0) -> None:
        """step 0: the round's update; step > 0: the update after that many local steps."""
        self.snapshots[(rnd, client, step)] = {k: v.detach().float().clone() for k, v in update.items()}

    def __len__(self) -> int:
        return len(self.snapshots)

    def clear(self) -> None:
        self.snapshots.clear()

    def samples(self, compressor: Compressor) -> dict[int, torch.Tensor]:
        """All snapshots' normalized samples per unit index, each in (round, client, step) order."""
        per_unit: dict[int, list[torch.Tensor]] = {}
        for key in sorted(self.snapshots):
            for unit, x in compressor.samples(self.snapshots[key]).items():
                per_unit.setdefault(unit, []).append(x)
        return {unit: torch.cat(xs) for unit, xs in sorted(per_unit.items())}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            f"{rnd}/{client}/{step}/{name}": t
            for (rnd, client, step), upd in self.snapshots.items()
            for name, t in upd.items()
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.snapshots = {}
        for key, t in state.items():
            rnd, client, step, name = key.split("/", 3)
            self.snapshots.setdefault((int(rnd), int(client), int(step)), {})[name] = t.clone()


def train_autoencoder(
    net: torch.nn.Module,
    samples: dict[int, torch.Tensor],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    max_samples: int | None = None,
    pca_init: bool = True,
    eval_latent: int | None = None,
) -> dict:
    """MSE + Adam on the samples (per unit index, from SnapshotPool.samples); returns metrics.

    Shared networks (paper, row) train on all units' samples together, a seeded subsample of at
    most max_samples in seeded order. A per-unit network (tensor) takes one full-batch step per
    epoch over every unit's own samples (each tensor's pool is small: rank x snapshots vectors).
    A nested network draws the latent size it trains at per step, so every prefix of the latent
    learns to decode; with pca_init it starts from the principal basis of the samples.
    ae_pool_snr_db: the trained network's SNR on its own training samples at `eval_latent` values
    per sample (default: the full latent), before any latent quantization."""
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    sizes = net.latent_sizes
    if not net.per_unit:
        flat = torch.cat([samples[u] for u in sorted(samples)]) if samples else torch.zeros(0)
        if max_samples is not None and len(flat) > max_samples:
            flat = flat[torch.randperm(len(flat), generator=g)[:max_samples]]
        samples = {0: flat} if len(flat) else {}
    count = sum(len(x) for x in samples.values())
    metrics = {"ae_samples": count}
    if count == 0:
        return metrics
    if pca_init and hasattr(net, "init_from_pca"):
        net.init_from_pca(samples)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    loss_mean = 0.0
    for _ in range(epochs):
        loss_sum, batches = 0.0, 0
        for unit, x_all, order in _batches(net, samples, batch_size, g):
            x = x_all[order]
            z = net.encode(x, unit)
            if net.nested:
                z = z[:, : sizes[int(torch.randint(len(sizes), (1,), generator=g))]]
            loss = torch.nn.functional.mse_loss(net.decode(z, unit), x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach())
            batches += 1
        loss_mean = loss_sum / max(batches, 1)
    net.eval()
    signal = noise = 0.0
    with torch.no_grad():
        for unit, x in samples.items():
            rebuilt = net.decode(net.encode(x, unit)[:, : eval_latent or sizes[-1]], unit)
            signal += float((x**2).sum())
            noise += float(((x - rebuilt) ** 2).sum())
    metrics.update(
        {
            "ae_train_loss": loss_mean,
            "ae_pool_snr_db": snr_db(signal, noise),
            "ae_train_seconds": time.perf_counter() - t0,
        }
    )
    return metrics


def _batches(net, samples: dict[int, torch.Tensor], batch_size: int, g: torch.Generator):
    """(unit, samples, index batch) in seeded order: shuffled mini-batches of the one shared pool,
    or each unit's whole pool once (per-unit networks; units in seeded order)."""
    if net.per_unit:
        units = sorted(samples)
        for i in torch.randperm(len(units), generator=g).tolist():
            yield units[i], samples[units[i]], torch.arange(len(samples[units[i]]))
        return
    x = samples[0]
    order = torch.randperm(len(x), generator=g)
    for start in range(0, len(x), batch_size):
        yield None, x, order[start : start + batch_size]
