"""Faults on purpose (`[faults]`, client/faults.py): a named client, in named rounds, replaces its
honest reply with a bad one, after it trained and encoded honestly."""

from __future__ import annotations

from ...client import faults
from ...codecs import build_codec
from ...codecs.wire import Message
from ...tensors import Tensors
from ..reply import Reply
from ..session import Session
from . import ClientRound, UploadFilter


class Faults(UploadFilter):
    def __init__(self, session: Session):
        self.s = session

    def reply(self, up: ClientRound, reply: Reply, message: Message | None) -> Reply:
        cfg = self.s.cfg
        if not faults.applies(cfg.faults, up.client, up.turn.round):
            return reply
        return faults.spoil(cfg.faults, cfg.seed, up.client, up.turn.round, message, reply, self._raw)

    def _raw(self, tensors: Tensors) -> bytes:
        """A faulty client's blob: the uplink's codec, fresh (the client's own keeps its honest
        state), or plain fp32 where that codec refuses the values (quantize and NaN)."""
        try:
            return build_codec(self.s.uplink_spec, self.s.adapter.layout).encode(tensors)
        except ValueError:
            return build_codec("fp32", self.s.adapter.layout).encode(tensors)


def of(session: Session, client: int) -> Faults | None:
    return Faults(session) if session.cfg.faults.kind is not None else None
