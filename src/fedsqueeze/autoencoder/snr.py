"""Signal-to-noise ratios of a reconstructed update, in dB.

standard:  10 log10(||G||^2 / ||G - G_hat||^2) over the whole update (what the adaptive mode bounds).
paper:     the mean over LoRA layers of the same ratio on the layer's normalized [A^T | B] image
           (each tensor divided by its max |x|, as the network sees it), i.e. averaged per sample
           the way an image autoencoder is scored. Layers rebuilt exactly (all-zero, or sent dense
           by the adaptive fallback) are left out: it scores the autoencoder, and one exact layer
           would otherwise weigh in at the cap. The paper's exact formula was not available to us;
           this is our reading of it. Small layers count as much as large ones here, so the two
           numbers differ when the error is uneven across layers.
"""

from __future__ import annotations

import math

from ..tensors import Tensors
from .views import layer_units

CAP_DB = 200.0
"""Reported for an exact reconstruction (noise 0), so rounds.jsonl stays finite JSON."""


def snr_db(signal: float, noise: float) -> float:
    if noise <= 0.0:
        return CAP_DB if signal > 0.0 else 0.0
    if signal <= 0.0:
        return -CAP_DB
    return max(-CAP_DB, min(CAP_DB, 10.0 * math.log10(signal / noise)))


def layer_snr_db(update: Tensors, rebuilt: Tensors) -> float | None:
    """The paper-style SNR: mean over the layers rebuilt with some error; None when there are none."""
    names = list(update)
    values = []
    for unit in layer_units(names, [tuple(update[n].shape) for n in names]):
        signal = noise = 0.0
        for n in unit.names:
            scale = float(update[n].abs().max()) if update[n].numel() else 0.0
            if scale == 0.0:
                continue
            x = update[n].double() / scale
            signal += float((x**2).sum())
            noise += float(((x - rebuilt[n].double() / scale) ** 2).sum())
        if signal > 0.0 and noise > 0.0:
            values.append(snr_db(signal, noise))
    return sum(values) / len(values) if values else None
