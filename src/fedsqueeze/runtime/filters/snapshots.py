"""Snapshots: the adapter after the local steps a method names (`Method.snapshot_steps`), put in the
client's state as f"{SNAPSHOT}{step}/{name}" for client_upload, and taken out again after it."""

from __future__ import annotations

from ...strategies.base import SNAPSHOT
from ...tensors import Tensors, prefixed
from ..session import Session
from . import ClientRound, UploadFilter


class Snapshots(UploadFilter):
    def __init__(self) -> None:
        self.wanted: set[int] = set()
        self.taken: Tensors = {}

    def begin(self, up: ClientRound) -> None:
        self.wanted = set(up.session.client_method.snapshot_steps(up.turn.round, up.session.local_steps))
        self.taken = {}

    def step(self, up: ClientRound, n: int) -> None:
        if n in self.wanted:
            self.taken.update(prefixed(f"{SNAPSHOT}{n}/", up.session.adapter.get()))

    def before_upload(self, up: ClientRound) -> None:
        up.state.update(self.taken)  # for this call only: client_upload may also write state

    def after(self, up: ClientRound) -> None:
        for key in self.taken:
            up.state.pop(key, None)
        self.taken = {}


def of(session: Session, client: int) -> Snapshots | None:
    return Snapshots()
