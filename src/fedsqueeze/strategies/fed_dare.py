"""Fed-DARE: the client drops each entry of its delta at rate p, rescales the survivors by 1/(1-p)
so the upload is unbiased (E[upload] = delta, up to round((1-p) n) / n vs 1 - p), and sends it
sparse; the server averages like FedAvg and broadcasts the dense adapter.

The mask keeps round((1-p) n) entries of each tensor, drawn from (seed, round, client) and the
tensor's name with codecs/seeded.py's generator: independent across clients and rounds, reproducible
on resume. The upload carries that seed as a wire marker, so the default uplink `seeded` sends the
kept values only and the server redraws their positions (uplink.codec = "sparse" sends them).
A caller that drives the hooks without telling the round and client (their `turn`) gets the
mask seeded by the trained adapter's bytes instead, as before the hooks were told."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..tensors import Tensors
from . import lora_math as lm
from .base import ClientTurn, ClientUpdate, Message, Method
from .mixins import MeanOfDeltas, MessageSizes
from .sizes import MessageSize, SizingContext


class FedDAREParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    p: float = Field(0.9, ge=0.0, lt=1.0, description="probability of dropping each uploaded entry")


class FedDARE(MeanOfDeltas, MessageSizes, Method):
    name = "fed-dare"
    Params = FedDAREParams
    params: FedDAREParams
    default_uplink = "seeded"
    eval_rides = True  # the base broadcast / client_receive: the global adapter itself

    @classmethod
    def message_sizes(cls, params: FedDAREParams, at: SizingContext) -> list[MessageSize]:
        """Up: the kept values of the seeded mask (the default uplink `seeded`); down: the dense adapter."""
        up, down = at.blob("seeded", at.seeded(at.ones(), params.p)), at.blob("fp32", at.ones())
        return [MessageSize("fed-dare", up, down, f"{1 - params.p:.0%} of the delta kept (seeded), values only")]

    def client_upload(
        self, state: Tensors, start: Tensors, trained: Tensors, turn: ClientTurn | None = None
    ) -> Message:
        if turn is not None:
            seed = lm.mask_seed(self.ctx.seed, turn.round, turn.client, "dare")
        else:
            seed = lm.content_seed(self.ctx.seed, trained)
        p = self.params.p
        out = {k: lm.seeded_drop(trained[k] - start[k], p, seed, k) for k in trained if self.trainable(k)}
        return Message(out, mask_seed=seed if p > 0 else None)

    def aggregate(self, rnd: int, updates: list[ClientUpdate]) -> dict:
        """global += sum_i w_i upload_i (FedAvg of deltas; the uploads are unbiased estimates)."""
        weights = self.weights(updates)
        for w, u in zip(weights, updates):
            for k, v in u.tensors.items():
                self.adapter[k] = self.adapter[k] + w * v.to(self.adapter[k].dtype)
        return {}
