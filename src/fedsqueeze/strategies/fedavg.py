"""FedAvg over LoRA ("FedIT"): the global adapter goes down, each client's delta comes up,
the server adds their (example- or uniform-) weighted mean. A and B are averaged separately."""

from __future__ import annotations

from .base import ClientUpdate, Method


class FedAvg(Method):
    name = "fedavg"

    def aggregate(self, rnd: int, updates: list[ClientUpdate]) -> dict:
        for w, u in zip(self.weights(updates), updates):
            for k, delta in u.tensors.items():
                self.adapter[k] = self.adapter[k] + w * delta
        return {}
