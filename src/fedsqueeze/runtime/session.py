"""Everything a run needs, built once from a Config: base model + adapter, data, method, links.

The in-process runtime and the Flower apps both build a Session, so the method, codec and data
objects are the same ones whichever runtime wires them together.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass

import torch

from ..client import TrainSettings, evaluate, train_local
from ..codecs import Sender, build_codec
from ..config import Config
from ..errors import ConfigError
from ..data import build_federation, sample_batches
from ..hardware import Placement
from ..models import LoraAdapter, build_model
from ..strategies import ClientUpdate, Method, MethodContext, build_method
from ..tensors import Tensors


@dataclass
class Session:
    cfg: Config
    model: object
    tokenizer: object
    adapter: LoraAdapter
    federation: object
    method: Method
    uplink_spec: str
    downlink_spec: str
    placement: Placement

    @classmethod
    def build(cls, cfg: Config, log=print, caps=None) -> "Session":
        """caps: the hardware's Capabilities (detected when None; tests inject them)."""
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        placement = Placement.resolve(cfg.train.device, cfg.train.precision, cfg.model.dtype, caps)
        peft_model, tok = build_model(cfg, placement, log)
        adapter = LoraAdapter(peft_model)
        method_cls_pooled = _method_pooled(cfg.method)
        federation = build_federation(cfg.data, tok, cfg.seed, pooled=method_cls_pooled)
        ctx = MethodContext(layout=adapter.layout, init_adapter=adapter.get(), seed=cfg.seed,
                            weighting=cfg.train.weighting, rounds=cfg.train.rounds,
                            staleness_exponent=cfg.hybrid.staleness_exponent)
        method = build_method(cfg.method, cfg.params, ctx)
        session = cls(cfg, peft_model, tok, adapter, federation, method,
                      cfg.uplink.codec or method.default_uplink, cfg.downlink.codec or method.default_downlink,
                      placement)
        down = session.downlink_sender().codec  # also validates both specs before any training
        session.uplink_sender()
        if method.lossless_downlink and not down.lossless:
            raise ConfigError(f"config key 'downlink.codec': {cfg.method} keeps every client's adapter identical to "
                              f"the server's, so its downlink must be lossless (got {session.downlink_spec!r}; "
                              f"e.g. sparse, fp32, or either > zstd)")
        return session

    # ---- links -------------------------------------------------------------------------------
    def uplink_sender(self) -> Sender:
        ef = self.cfg.uplink.error_feedback
        ef = self.method.default_error_feedback if ef is None else ef
        return Sender(build_codec(self.uplink_spec, self.adapter.layout), ef)

    def downlink_sender(self) -> Sender:
        return Sender(build_codec(self.downlink_spec, self.adapter.layout), bool(self.cfg.downlink.error_feedback))

    def uplink_decoder(self):
        return build_codec(self.uplink_spec, self.adapter.layout)

    def downlink_decoder(self):
        return build_codec(self.downlink_spec, self.adapter.layout)

    # ---- clients -----------------------------------------------------------------------------
    @property
    def num_clients(self) -> int:
        return len(self.federation.clients)

    @property
    def local_steps(self) -> int:
        t = self.cfg.train
        if self.method.pooled:  # centralized: the federation's total optimizer steps per round
            return t.local_steps * (t.clients_per_round or len(self.federation.eval_sets))
        return t.local_steps

    def sample_clients(self, rnd: int, among: list[int] | None = None) -> list[int]:
        """Seeded by (seed, round); `among` excludes clients still busy with an earlier round."""
        pool = list(range(self.num_clients)) if among is None else sorted(among)
        k = self.cfg.train.clients_per_round
        if k is None or k >= len(pool):
            return pool
        rng = random.Random(f"{self.cfg.seed}/sample/{rnd}")
        return sorted(rng.sample(pool, k))

    def train_client(self, client: int, rnd: int, start: Tensors, on_step=None, steps: int | None = None,
                     seconds: float | None = None) -> tuple[Tensors, list[float]]:
        """Trains from `start` on `client`'s data for this round; deterministic in (seed, client, rnd).

        steps / seconds (hybrid.partial_work): stop after that many of the round's local steps, or
        before the step that would end past `seconds` of wall-clock (always at least one step);
        the rest of the round's plan (and its learning-rate schedule) is simply not reached."""
        t = self.cfg.train
        data = self.federation.clients[client]
        self.adapter.set(start)
        params = self.adapter.trainable(self.method.trainable)
        pad = self.tokenizer.pad_token_id
        lo, hi = self.method.data_slice(rnd)
        first, last = int(lo * len(data.train)), max(int(hi * len(data.train)), int(lo * len(data.train)) + 1)
        plan = sample_batches(last - first, t.batch_size, self.local_steps, self.cfg.seed, client, rnd)
        plan = [[first + i for i in batch] for batch in plan][:steps]
        torch.manual_seed(_seed(self.cfg.seed, "train", client, rnd))  # LoRA dropout, if any
        settings = TrainSettings(self.local_steps, t.lr, t.weight_decay, t.schedule, t.warmup_steps,
                                 t.grad_clip, t.micro_batch_size)
        batches = (data.train.batch(ix, pad) for ix in plan)
        if seconds is not None:
            batches = within_seconds(batches, seconds)
        losses = train_local(self.model, params, batches, settings, on_step, self.placement)
        return self.adapter.get(), losses

    def evaluate_set(self, adapter: Tensors, dataset, max_batch: int = 8) -> float:
        self.adapter.set(adapter)
        pad = self.tokenizer.pad_token_id
        idx = list(range(len(dataset)))
        batches = (dataset.batch(idx[i:i + max_batch], pad) for i in range(0, len(idx), max_batch))
        return evaluate(self.model, batches, self.placement)

    def evaluate_all(self, client_states: list[Tensors]) -> tuple[dict[str, float], float | None]:
        """Held-out loss per eval set (client i's set with the adapter the method shows client i),
        and the out-of-domain loss of the global adapter if an OOD set is configured."""
        results = {}
        for i, (name, dataset) in enumerate(self.federation.eval_sets.items()):
            owner = 0 if self.method.pooled else i
            results[name] = self.evaluate_set(self.method.eval_adapter(owner, client_states[owner]), dataset)
        ood = None
        if self.federation.ood is not None and not self.method.personalized:
            ood = self.evaluate_set(self.final_adapter(client_states), self.federation.ood)
        return results, ood

    def final_adapter(self, client_states: list[Tensors]) -> Tensors:
        if self.method.pooled:
            return self.method.eval_adapter(0, client_states[0])
        return self.method.global_adapter()


def _seed(*parts) -> int:
    """A stable 32-bit seed from its parts (str hashes are salted per process, so not hash())."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _method_pooled(name: str) -> bool:
    from ..strategies import METHODS

    return METHODS.get(name).pooled


def within_seconds(batches, seconds: float):
    """Yields batches while one more step, at the mean pace so far, still ends within `seconds`
    of the first; the first always comes (a client that reports something beats one that does not)."""
    t0 = time.perf_counter()
    for n, batch in enumerate(batches):
        if n and (time.perf_counter() - t0) * (n + 1) / n > seconds:
            return
        yield batch


__all__ = ["ClientUpdate", "Session"]

