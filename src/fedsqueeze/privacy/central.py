"""Central mode: the server clips each client's contribution, noises the round's sum, and hands the
method the noised mean (everything after that is post-processing).

A method declares its contribution (the CentralDP mixin's `dp_contribution`: the tensors whose uniform mean its
aggregate is a function of) and how it finishes from their mean (`dp_aggregate`). The mean
divides by the fixed k clients per round, not by how many arrived, so the count is not a function
of the data. The server also samples clients with its secret (`sampling_seed`): amplification by
sampling needs a sample the adversary cannot recompute from the config.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..tensors import Tensors
from .noise import add_noise, clip, generator, new_secret
from .plan import Plan


class CentralNoise:
    def __init__(self, plan: Plan):
        self.plan = plan
        self.secret = new_secret(plan.noise_seed, "server")
        self.clip_norm = plan.clip_norm

    @property
    def sampling_seed(self) -> str:
        return f"dp/{self.secret}"

    def around(self, method) -> Callable[[int, list], dict]:
        """The method's aggregate under central DP: `aggregate(rnd, updates)` of this noise."""
        return lambda rnd, updates: self.aggregate(method, rnd, updates)

    def aggregate(self, method, rnd: int, updates: list) -> dict:
        if not updates:
            return {}
        bound = self.clip_norm
        total: Tensors = {}
        unclipped = 0
        for u in updates:
            clipped, norm = clip(method.dp_contribution(u), bound)
            unclipped += norm <= bound
            for k, v in clipped.items():
                total[k] = total[k] + v if k in total else v
        k = self.plan.per_round
        noised = add_noise(total, self.plan.std(bound), generator(self.secret, "sum", rnd))
        mean = {name: v / k for name, v in noised.items()}
        metrics = method.dp_aggregate(rnd, mean, updates) or {}
        metrics = {**metrics, "dp_clip_norm": bound, "dp_noise_std": self.plan.std(bound) / k}
        if self.plan.count_std is not None:
            g = generator(self.secret, "count", rnd)
            count = unclipped + float(torch.randn((), generator=g, dtype=torch.float64)) * self.plan.count_std
            # Geometric update toward the target quantile of the norms (Andrew et al. 2021).
            plan = self.plan
            self.clip_norm = bound * math.exp(-plan.clip_learning_rate * (count / k - plan.target_quantile))
        return metrics

    def state_dict(self) -> Tensors:
        return {
            "secret": torch.tensor([self.secret], dtype=torch.int64),
            "clip_norm": torch.tensor([self.clip_norm], dtype=torch.float64),
        }

    def load_state_dict(self, state: Tensors) -> None:
        if "secret" in state:
            self.secret = int(state["secret"][0])
            self.clip_norm = float(state["clip_norm"][0])
