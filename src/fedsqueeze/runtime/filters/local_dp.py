"""Local differential privacy (privacy/local.py): each client clips and noises its own update before
anything leaves it, and keeps its train loss (a clean statistic of its data) to itself.

noise-first: the adapter client_upload sees is the noised one (before_upload); select-first: the
method selects from the clean update and only what it kept is noised (upload)."""

from __future__ import annotations

from dataclasses import replace

import torch

from ...codecs.wire import Message
from ...privacy.local import LocalNoise
from ...tensors import Tensors
from ..reply import Reply
from ..session import Session
from . import ClientRound, UploadFilter

SECRET = "privacy/secret"


class LocalDP(UploadFilter):
    def __init__(self, noise: LocalNoise, select_first: bool):
        self.noise = noise
        self.select_first = select_first

    def before_upload(self, up: ClientRound) -> None:
        if not self.select_first:  # the method sees only the noised update (docs/PRIVACY.md)
            up.trained = self.noise.noise_first(up.turn.round, up.start, up.trained, up.keep)

    def upload(self, up: ClientRound, message: Message | None) -> Message | None:
        if self.select_first and message is not None:
            return self.noise.select_first(up.turn.round, message)
        return message

    def reply(self, up: ClientRound, reply: Reply, message: Message | None) -> Reply:
        return replace(reply, train_loss=None)

    def state_dict(self) -> Tensors:
        if self.noise.secret is None:
            return {}
        return {SECRET: torch.tensor([self.noise.secret], dtype=torch.int64)}  # the client's own; never sent

    def load_state_dict(self, state: Tensors) -> None:
        if SECRET in state:
            self.noise.secret = int(state[SECRET][0])


def of(session: Session, client: int) -> LocalDP | None:
    plan = session.privacy
    if plan is None or plan.mode != "local":
        return None
    return LocalDP(LocalNoise(plan, client), session.cfg.privacy.order == "select-first")
