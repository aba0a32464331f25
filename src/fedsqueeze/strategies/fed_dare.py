"""Fed-DARE: the client drops each entry of its delta with probability p (Bernoulli), rescales the
survivors by 1/(1-p) so the upload is unbiased (E[upload] = delta), and sends it sparse; the server
averages like FedAvg and broadcasts the dense adapter.

The mask is seeded by (seed, the trained adapter's bytes): client hooks are told neither the client
id nor the round, and the trained adapter is different for every client and round, so the masks are
independent across clients and rounds yet reproducible on resume."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..tensors import Tensors
from . import lora_math as lm
from .base import ClientUpdate, MeanOfDeltas, Method


class FedDAREParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    p: float = Field(0.9, ge=0.0, lt=1.0, description="probability of dropping each uploaded entry")


class FedDARE(MeanOfDeltas, Method):
    name = "fed-dare"
    Params = FedDAREParams
    default_uplink = "sparse"

    def client_upload(self, state: Tensors, start: Tensors, trained: Tensors) -> Tensors:
        rng = lm.generator_for(lm.content_seed(self.ctx.seed, trained), "dare")
        return {k: lm.random_drop(trained[k] - start[k], self.params.p, rng) for k in trained if self.trainable(k)}

    def aggregate(self, rnd: int, updates: list[ClientUpdate]) -> dict:
        """global += sum_i w_i upload_i (FedAvg of deltas; the uploads are unbiased estimates)."""
        weights = self.weights(updates)
        for w, u in zip(weights, updates):
            for k, v in u.tensors.items():
                self.adapter[k] = self.adapter[k] + w * v.to(self.adapter[k].dtype)
        return {}

    @classmethod
    def upload_selection(cls, params) -> str | None:
        return "drops entries with a mask seeded by a hash of the trained adapter"
