"""FedAvg over LoRA ("FedIT"): the global adapter goes down, each client's update comes up,
the server takes the (example- or uniform-) weighted mean. A and B are averaged separately."""

from __future__ import annotations

from typing import Literal, cast

import torch

from .base import ClientTurn, ClientUpdate, Method, NoParams
from .mixins import MeanOfDeltas, MessageSizes
from .sizes import MessageSize, SizingContext


class FedAvgParams(NoParams):
    upload: Literal["delta", "adapter"] = "delta"
    """delta: trained - start (what lossy codecs and error feedback want); adapter: the trained
    adapter itself, as in FedIT (bit-exact with centralized training for a single client)."""


class FedAvg(MeanOfDeltas, MessageSizes, Method):
    name = "fedavg"
    Params = FedAvgParams
    eval_rides = True  # the base broadcast / client_receive: the global adapter itself
    params: FedAvgParams

    @classmethod
    def message_sizes(cls, params, at: SizingContext) -> list[MessageSize]:
        """The whole adapter each way, fp32 and with bf16 values."""
        dense, dense16 = at.blob("fp32", at.ones()), at.blob("bf16", at.ones())
        return [
            MessageSize("fedavg", dense, dense, "the whole adapter (or its delta), fp32"),
            MessageSize("fedavg, bf16 values", dense16, dense16, "codec bf16 both ways"),
        ]

    def client_upload(self, state, start, trained, turn: ClientTurn | None = None):
        if self.params.upload == "adapter":
            return {k: v for k, v in trained.items() if self.trainable(k)}
        return super().client_upload(state, start, trained, turn)

    def aggregate(self, rnd: int, updates: list[ClientUpdate]) -> dict:
        if not updates:
            return {}
        weights = self.weights(updates, renormalize=self.params.upload == "adapter")
        for k in updates[0].tensors:
            mean = cast(torch.Tensor, sum(w * u.tensors[k] for w, u in zip(weights, updates)))
            self.adapter[k] = mean if self.params.upload == "adapter" else self.adapter[k] + mean
        return {}

    def dp_contribution(self, update: ClientUpdate):
        """The client's change to the global adapter (upload = "adapter": trained minus global)."""
        if self.params.upload == "adapter":
            return {k: v - self.adapter[k] for k, v in update.tensors.items()}
        return dict(update.tensors)
