"""Upload filters: cross-cutting features around a client's upload, in order (Flower's mods, as a
list of small objects). Each filter is one file and one line in registry.py's UPLOAD_FILTERS; ClientRole asks every
registered factory, in registration order, for the filter of its session and client (None: this run
does not need it), and calls each filter's hooks at these points of the client's round:

    begin(up)    after client_receive, before training
    train ........ step(up, n) after each local step n (1-based)
    before_upload  after training: may change up.trained (local DP noise-first) or up.state
    client_upload  (the method)
    upload(up, message) -> message   before encoding (local DP select-first)
    encode         (the uplink codec) -> Reply
    reply(up, reply, message) -> Reply   after encoding (faults, a withheld train loss)
    after(up)    always, last (clean-up)

A filter's own state across rounds (e.g. local DP's secret) is in `state_dict` / `load_state_dict`,
kept with the client's (Flower: context.state).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ...codecs.wire import Message
from ...registry import UPLOAD_FILTERS
from ...strategies.base import ClientTurn
from ...tensors import Tensors
from ..reply import Reply
from ..session import Session


@dataclass
class ClientRound:
    """One client's round as the filters see it."""

    session: Session
    client: int
    turn: ClientTurn
    state: Tensors
    """The client's method state (what client_receive / client_upload read and write)."""
    start: Tensors
    """The adapter it trained from."""
    trained: Tensors
    """The adapter after local training (filters may replace it before client_upload)."""
    keep: Callable[[str], bool]
    """What it trained: name -> bool."""


class UploadFilter:
    """Every hook optional; see the module docstring for when each is called."""

    def begin(self, up: ClientRound) -> None: ...

    def step(self, up: ClientRound, n: int) -> None: ...

    def before_upload(self, up: ClientRound) -> None: ...

    def upload(self, up: ClientRound, message: Message | None) -> Message | None:
        return message

    def reply(self, up: ClientRound, reply: Reply, message: Message | None) -> Reply:
        return reply

    def after(self, up: ClientRound) -> None: ...

    def state_dict(self) -> Tensors:
        return {}

    def load_state_dict(self, state: Tensors) -> None: ...


FilterFactory = Callable[[Session, int], UploadFilter | None]


def filters_for(session: Session, client: int) -> list[UploadFilter]:
    """The filters around `client`'s uploads in this session, in registration order."""
    found = (factory(session, client) for _, factory in UPLOAD_FILTERS.in_order())
    return [f for f in found if f is not None]
