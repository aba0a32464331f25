"""Faults on purpose (`[faults]`): a named client, in named rounds, sends a bad upload instead of
its honest one. It trains and encodes honestly first (its error-feedback memory and method state
are those of an honest client whose reply was lost), then spoils what it sends (the `reply` hook of
this upload filter), so a run whose faulty uploads are all rejected ends where a run without them
would."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import torch

from ...codecs import build_codec
from ...codecs.wire import Message, as_message, message_tensors
from ...config import FaultsConfig
from ...tensors import Tensors
from ..reply import Reply
from ..session import Session
from . import ClientRound, UploadFilter

FOREIGN = "foreign.weight"  # a tensor no layout has


class ClientDropped(Exception):
    """The client sends no reply this round (fault `drop`)."""


def applies(faults: FaultsConfig, client: int, rnd: int) -> bool:
    return faults.kind is not None and client in faults.clients and (faults.rounds is None or rnd in faults.rounds)


def spoil(
    faults: FaultsConfig,
    seed: int,
    client: int,
    rnd: int,
    upload: Tensors | Message | None,
    reply: Reply,
    encode,
) -> Reply:
    """The faulty reply for this round; `encode(tensors)` writes tensors with a codec of the
    uplink's spec that is not the client's own (its state must stay honest)."""
    kind, blob = faults.kind, reply.blob
    if kind == "drop":
        raise ClientDropped(f"fault 'drop': client {client} sends no reply in round {rnd}")
    if kind == "slow":  # in-process: never arrives; on Flower: past the round timeout
        return replace(reply, delay_s=math.inf)
    if kind == "inflate-examples":
        return replace(reply, num_examples=10**9)
    rng = random.Random(f"{seed}/fault/{client}/{rnd}")
    if kind in ("truncate", "bitflip", "garbage"):
        if not blob:
            return reply
        if kind == "truncate":
            return replace(reply, blob=blob[: len(blob) // 2])
        if kind == "bitflip":
            at = rng.randrange(len(blob))
            return replace(reply, blob=blob[:at] + bytes([blob[at] ^ (1 << rng.randrange(8))]) + blob[at + 1 :])
        return replace(reply, blob=rng.randbytes(len(blob)))
    if upload is None:
        return reply
    # Only the values are spoiled: side information (a mask seed) is the message's, not the update's.
    tensors = {k: v.clone() for k, v in upload.items()}
    first = next(iter(tensors))
    if kind == "nan":
        tensors[first].fill_(math.nan)
    elif kind == "inf":
        tensors[first].fill_(math.inf)
    elif kind in ("scale", "sign-flip"):
        factor = faults.scale if kind == "scale" else -faults.scale
        tensors = {k: v * factor for k, v in tensors.items()}
    elif kind == "missing":
        del tensors[first]
    elif kind == "foreign":
        tensors[FOREIGN] = torch.ones(64, 64)
    return replace(reply, blob=encode(message_tensors(as_message(upload).carrying(tensors))))


class Faults(UploadFilter):
    def __init__(self, session: Session):
        self.s = session

    def reply(self, up: ClientRound, reply: Reply, message: Message | None) -> Reply:
        cfg = self.s.cfg
        if not applies(cfg.faults, up.client, up.turn.round):
            return reply
        return spoil(cfg.faults, cfg.seed, up.client, up.turn.round, message, reply, self._raw)

    def _raw(self, tensors: Tensors) -> bytes:
        """A faulty client's blob: the uplink's codec, fresh (the client's own keeps its honest
        state), or plain fp32 where that codec refuses the values (quantize and NaN)."""
        try:
            return build_codec(self.s.uplink_spec, self.s.adapter.layout).encode(tensors)
        except ValueError:
            return build_codec("fp32", self.s.adapter.layout).encode(tensors)


def of(session: Session, client: int) -> Faults | None:
    return Faults(session) if session.cfg.faults.kind is not None else None
