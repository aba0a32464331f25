"""Local mode: each client clips and noises its own update before anything leaves it.

noise-first (the default, keeps the guarantee): the client's update trained - start (the tensors
the method trains) is clipped to C and noised; the method's `client_upload` then sees only the
noised adapter start + noised update, so whatever it selects or compresses from it, and every
codec stage after it, is post-processing. select-first (Fed-SMP's cheaper order): the method
builds its upload from the clean update and only its non-zero values are clipped and noised; a
data-dependent selection then leaks through its positions (privacy.rules says which methods).
"""

from __future__ import annotations

from ..codecs.wire import Message, as_message
from ..tensors import Tensors
from .noise import add_noise, clip, generator, new_secret
from .plan import Plan


class LocalNoise:
    """One client's noise: its own secret, kept in its state and never sent."""

    def __init__(self, plan: Plan, client: int):
        self.plan = plan
        self.client = client
        self.secret: int | None = None

    def _generator(self, rnd: int):
        if self.secret is None:
            self.secret = new_secret(self.plan.noise_seed, "client", self.client)
        return generator(self.secret, "update", rnd)

    def noise_first(self, rnd: int, start: Tensors, trained: Tensors, trainable) -> Tensors:
        """The adapter whose update is the clipped, noised update (untrained tensors as at start)."""
        delta = {k: trained[k] - start[k] for k in trained if trainable(k)}
        clipped, _ = clip(delta, self.plan.clip_norm)
        noised = add_noise(clipped, self.plan.std(self.plan.clip_norm), self._generator(rnd))
        return {k: start[k] + noised[k].to(start[k].dtype) if k in noised else start[k] for k in trained}

    def select_first(self, rnd: int, upload: Tensors | Message) -> Message:
        """The upload's values clipped and noised where non-zero (its side information, such as a
        mask seed, is no update value: it rides along as it was)."""
        clipped, _ = clip(dict(upload), self.plan.clip_norm)
        noised = add_noise(clipped, self.plan.std(self.plan.clip_norm), self._generator(rnd), only_nonzero=True)
        return as_message(upload).carrying(noised)
