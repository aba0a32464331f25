"""Everything a run needs, built once from a Config: base model + adapter, data, method, links.

Every runtime builds a Session (in-process, each Flower ClientApp, the ServerApp), so the method,
codec and data objects are the same ones whichever transport moves the blobs. It only builds:
training is client/, evaluation evaluation.py, the round the driver.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..codecs import Sender, build_codec
from ..config import Config
from ..data import build_federation
from ..errors import ConfigError
from ..hardware import Placement
from ..models import LoraAdapter, build_model
from ..strategies import ClientUpdate, Method, MethodContext, adapter_spec, build_method

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ..data.federation import Federation
    from ..privacy.plan import Plan


@dataclass
class Session:
    cfg: Config
    model: torch.nn.Module
    """The base model with the run's LoRA attached (a peft model)."""
    tokenizer: PreTrainedTokenizerBase
    adapter: LoraAdapter
    federation: Federation
    method: Method
    """The method's server half (its global state); the clients' hooks run on `client_method`."""
    client_method: Method
    """A separate instance for the client hooks (one per process, as on Flower), so that a client
    hook never sees server state in-process either."""
    uplink_spec: str
    downlink_spec: str
    placement: Placement
    privacy: Plan | None = None
    """The resolved noise and guarantee under privacy.mode = central | local, else None."""

    @classmethod
    def build(cls, cfg: Config, log=print, caps=None, model=None, data=None) -> Session:
        """caps: the hardware's Capabilities (detected when None; tests inject them). model: a
        (peft model, tokenizer) built earlier by build_model for this very model, adapter spec,
        seed and placement, its adapter back at its initial values (the resident worker's cache).
        data: where the federation comes from, `data(cfg, tokenizer) -> Federation` (None: the
        whole of data.source; data/owners.py gives a node's own owner, or only the owners' names)."""
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        placement = Placement.resolve(cfg.train.device, cfg.train.precision, cfg.model.dtype, caps)
        spec = adapter_spec(cfg.method, cfg.params, cfg.lora.r, cfg.lora.alpha)
        peft_model, tok = model if model is not None else build_model(cfg, placement, log, spec)
        adapter = LoraAdapter(peft_model)
        ctx = MethodContext(
            layout=adapter.layout,
            init_adapter=adapter.get(),
            seed=cfg.seed,
            weighting=cfg.train.weighting,
            rounds=cfg.train.rounds,
            staleness_exponent=cfg.hybrid.staleness_exponent,
            lora_r=cfg.lora.r,
        )
        method = build_method(cfg.method, cfg.params, ctx)
        client_method = copy.deepcopy(method)  # before anything happened to it: a fresh instance
        t0 = time.perf_counter()
        if data is None:
            federation = build_federation(cfg.data, tok, cfg.seed, pooled=method.mode.pooled)
        else:
            federation = data(cfg, tok)
        federation.build_seconds = time.perf_counter() - t0
        log(f"federation of {len(federation.clients)} clients built in {federation.build_seconds:.1f} s")
        session = cls(
            cfg,
            peft_model,
            tok,
            adapter,
            federation,
            method,
            client_method,
            cfg.uplink.codec or method.default_uplink,
            cfg.downlink.codec or method.default_downlink,
            placement,
        )
        if cfg.privacy.mode != "none":
            from ..checks import method_dp
            from ..privacy.plan import Plan

            session.privacy = Plan.of(cfg, len(federation.clients), method_dp(cfg))
        down = session.downlink_sender().codec  # also validates both specs before any training
        session.uplink_sender()
        if method.lossless_downlink and not down.lossless:
            raise ConfigError(
                f"config key 'downlink.codec': {cfg.method} keeps every client's adapter identical to "
                f"the server's, so its downlink must be lossless (got {session.downlink_spec!r}; "
                f"e.g. sparse, fp32, or either > zstd)"
            )
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

    # ---- derived from the config ---------------------------------------------------------------
    @property
    def num_clients(self) -> int:
        return len(self.federation.clients)

    @property
    def local_steps(self) -> int:
        t = self.cfg.train
        return self.method.mode.local_steps(t.local_steps, t.clients_per_round or len(self.federation.eval_sets))


__all__ = ["ClientUpdate", "Session"]
