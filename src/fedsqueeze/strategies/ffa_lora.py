"""FFA-LoRA: A stays frozen at its random init and never travels; only B is trained, sent and averaged.

Every participant builds the same initial adapter from the seed, so the client rebuilds its adapter
from that A and the broadcast B. B @ A then moves only in B, which also makes FedAvg of B exact:
sum_i w_i B_i A = (sum_i w_i B_i) A. Half the traffic of FedAvg (B and A have r (d_out + d_in)
entries between them; only d_out r travel)."""

from __future__ import annotations

from ..tensors import Tensors
from .base import ClientTurn
from .fedavg import FedAvg
from .lora_math import A_SUFFIX, B_SUFFIX
from .sizes import MessageSize, SizingContext


class FFALoRA(FedAvg):
    name = "ffa-lora"

    @classmethod
    def message_sizes(cls, params, at: SizingContext) -> list[MessageSize]:
        """B alone each way (not FedAvg's rows: A never travels)."""
        b_only = at.blob("fp32", at.ending(B_SUFFIX))
        return [MessageSize("ffa-lora", b_only, b_only, "B only, fp32")]

    def trainable(self, name: str) -> bool:
        return not name.endswith(A_SUFFIX)

    def broadcast(self, rnd: int, client: int) -> Tensors | None:
        if super().broadcast(rnd, client) is None:  # still the seeded init: nothing to send
            return None
        return {k: v for k, v in self.adapter.items() if self.trainable(k)}

    def client_receive(self, state: Tensors, message: Tensors | None, turn: ClientTurn | None = None) -> Tensors:
        """The frozen tensors from the shared init, the trained ones from the message."""
        init = self.ctx.init_adapter
        if message is None:
            return init
        return {k: message[k].to(v.dtype) if self.trainable(k) else v for k, v in init.items()}
