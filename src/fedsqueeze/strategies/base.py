"""What a federated method is: server-side state and math, plus pure client-side hooks.

A method never sees bytes, clients' data or the network. The runtime calls, per round:

    msg   = method.broadcast(round, client)                          # server -> downlink codec -> client
    start = client_method.client_receive(client_state, msg, turn=turn)   # client: adapter to train from
    ... local training of the trainable tensors ...
    upd   = client_method.client_upload(client_state, start, trained, turn=turn)  # client -> uplink -> server
    method.aggregate(round, [ClientUpdate, ...])                      # server: new global state

The server half and the client half never share an instance: every runtime builds the method once
for the server (`Session.method`) and once for its clients (`Session.client_method`), so a client
hook that read server state would fail in-process as it would on Flower.

`client_state` is a flat dict of tensors that the runtime keeps for that client (in memory and in
checkpoints for the in-process runtime, in `context.state` on Flower), so the client hooks must
keep everything they need across rounds in it. A method that wants the adapter at intermediate
local steps names them in `snapshot_steps`; client_upload then finds each one in the state as
f"{SNAPSHOT}{step}/{name}" (put there for that call only, never kept). The client hooks get the
round and the client they run for as `turn` (a ClientTurn; None when a caller drives the hooks
without saying, as unit tests may): a method that draws a random mask seeds it from them, so both
ends can redraw it and only the values travel (codecs/seeded.py).

That is all a method must be. What it declares only where it differs from the runtime's default
(central DP, its own upload admission, notes for the privacy rules) are optional mixins in
mixins.py, which the runtime asks with isinstance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from ..codecs.wire import Message
from ..tensors import Layout, Tensors, clone, prefixed

SNAPSHOT = "snapshot/"


def trained_shapes(layout: Layout, trainable) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the tensors of `layout` that `trainable` (a name -> bool test) keeps: what
    the default client_upload sends."""
    return {n: tuple(s) for n, s in zip(layout.names, layout.shapes) if trainable(n)}


def layout_mismatch(tensors: Tensors, expected: dict[str, tuple[int, ...]]) -> str | None:
    """How `tensors` differ from the names and shapes expected, or None."""
    extra, missing = sorted(set(tensors) - set(expected)), sorted(set(expected) - set(tensors))
    if extra:
        return f"unexpected tensor(s) {extra[:3]}" + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
    if missing:
        return f"missing tensor(s) {missing[:3]}" + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != tuple(shape):
            return f"tensor {name} has shape {tuple(tensors[name].shape)}, expected {tuple(shape)}"
    return None


@dataclass(frozen=True)
class AdapterSpec:
    """The LoRA a method trains, declared before the model is built (the method never sees the
    model; models/adapter.py builds it): peft rank and alpha, and `core`: an r x r matrix R between
    A and B in every layer (the layer adds (alpha / rank) B R A x; R's name is
    `<prefix>.lora_R.weight`, the identity at first); `basis`: B and A from the truncated SVD of
    each layer's frozen weight instead of the seeded init, R = 0 ("svd": B = U_r, A = S_r V_r^T,
    LoRA-XS; "svd-orthonormal": A = V_r^T; models/basis.py), computed by every party from the
    model, so they never travel (needs core)."""

    rank: int
    alpha: float
    core: bool = False
    basis: str | None = None


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class MethodContext:
    layout: Layout
    init_adapter: Tensors
    """The adapter every participant starts from (same seed everywhere)."""
    seed: int
    weighting: str = "examples"
    rounds: int = 1
    staleness_exponent: float = 0.5
    lora_r: int | None = None
    """The config's lora.r (the layout's rank differs where the method's AdapterSpec says so)."""


@dataclass(frozen=True)
class RunMode:
    """How a method runs, asked by the runtime in this one place instead of branching on flags.

    pooled: all clients' data pooled into one client (centralized training), trained for the
    federation's total optimizer steps per round. personalized: each client keeps and is
    evaluated with its own adapter. Either way nothing crosses the wire."""

    pooled: bool = False
    personalized: bool = False

    @property
    def federated(self) -> bool:
        return not (self.pooled or self.personalized)

    def local_steps(self, steps: int, clients_per_round: int) -> int:
        return steps * clients_per_round if self.pooled else steps

    def eval_owner(self, eval_set: int) -> int:
        """The client whose adapter is evaluated on eval set `eval_set` (the pooled client for all)."""
        return 0 if self.pooled else eval_set

    @property
    def has_global_adapter(self) -> bool:
        return not self.personalized


FEDERATED = RunMode()


@dataclass(frozen=True)
class ClientTurn:
    """Which round (1-based) and client the client hooks are running for."""

    round: int
    client: int


@dataclass
class ClientUpdate:
    client: int
    tensors: Tensors
    num_examples: float
    """Its weight: the examples it holds (per-owner data: its claim, capped at server.max_client_weight)."""
    staleness: int = 0
    metrics: dict = field(default_factory=dict)


class Method:
    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = NoParams
    mode: ClassVar[RunMode] = FEDERATED
    default_uplink: ClassVar[str] = "fp32"
    default_downlink: ClassVar[str] = "fp32"
    """Codecs used when the config leaves `uplink.codec` / `downlink.codec` unset."""
    lossless_downlink: ClassVar[bool] = False
    """True: clients must decode exactly what the server holds (a lossy downlink is refused)."""
    default_error_feedback: ClassVar[bool] = False
    eval_rides: ClassVar[bool] = False
    """True: with a lossless downlink, the adapter a client starts round r + 1 from (client_receive)
    is exactly the global adapter after round r, so owners may judge it there (eval.ride)."""
    """Uplink error feedback when the config leaves `uplink.error_feedback` unset."""

    def __init__(self, params: BaseModel, ctx: MethodContext):
        self.params = params
        self.ctx = ctx
        self.adapter: Tensors = clone(ctx.init_adapter)

    @classmethod
    def adapter_spec(cls, params: BaseModel, lora_r: int, lora_alpha: float) -> AdapterSpec:
        """The LoRA the models layer builds for this method. Default: the config's lora.r and alpha."""
        return AdapterSpec(lora_r, lora_alpha)

    # ---- server side -------------------------------------------------------------------------
    def global_adapter(self) -> Tensors:
        return self.adapter

    def broadcast(self, rnd: int, client: int) -> Tensors | Message | None:
        """What the server sends `client` at the start of round `rnd` (1-based); None = nothing.
        A `Message(tensors, whole=True)` says the tensors replace what the client holds; a
        `Message(tensors, mask_seed=s)` that both ends draw its random mask from `s` (codecs/seeded.py).

        Default: the global adapter, except while it is still the initial one, which every
        participant builds from the shared seed: sending it would only inflate the bill."""
        if all(torch.equal(v, self.ctx.init_adapter[k]) for k, v in self.adapter.items()):
            return None
        return self.adapter

    def attach_client(self, client: int, state: Tensors) -> None:
        """Before the server sends to `client`: what `detach_client` returned for it last time
        ({} the first time). Per-client server state lives in the run's state store, not in the
        method, so that memory does not grow with the federation. Default: none."""

    def detach_client(self, client: int) -> Tensors:
        """After the server sent to `client`: its per-client state, handed to the store and
        forgotten here (it comes back through `attach_client`)."""
        return {}

    def delivered(self, rnd: int, client: int, received: Message) -> None:
        """What `client` decoded from this round's message (after the downlink codec); methods that
        track each client's copy of the global state use it, so lossy downlinks never drift."""

    def aggregate(self, rnd: int, updates: list[ClientUpdate]) -> dict:
        """Fold decoded client updates into the global state; returns metrics for rounds.jsonl."""
        raise NotImplementedError

    def weights(self, updates: list[ClientUpdate], renormalize: bool = False) -> list[float]:
        """Example (or uniform) weights normalized over the round's updates, each discounted by
        (1 + staleness)^-a for late updates of the hybrid mode (so a lone stale update counts
        less). renormalize=True makes them sum to 1 again, for methods that average adapters."""
        if self.ctx.weighting == "uniform":
            raw = [1.0] * len(updates)
        else:
            raw = [float(max(u.num_examples, 1)) for u in updates]
        total = sum(raw)
        weights = [w / total for w in raw]
        if any(u.staleness for u in updates):
            a = self.ctx.staleness_exponent
            weights = [w * (1.0 + u.staleness) ** -a for w, u in zip(weights, updates)]
            if renormalize:
                total = sum(weights)
                weights = [w / total for w in weights]
        return weights

    def state_dict(self) -> dict[str, torch.Tensor]:
        return prefixed("adapter/", self.adapter)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.adapter = {k: state[f"adapter/{k}"].clone() for k in self.ctx.layout.names}

    # ---- client side (pure over client_state) -----------------------------------------------
    def client_receive(self, state: Tensors, message: Message | None, turn: ClientTurn | None = None) -> Tensors:
        """Returns the adapter the client trains from this round."""
        return self.ctx.init_adapter if message is None else message

    def client_upload(
        self, state: Tensors, start: Tensors, trained: Tensors, turn: ClientTurn | None = None
    ) -> Tensors | Message | None:
        """What the client sends (a Message for side information such as a mask seed). Default:
        the delta over all tensors this method trains."""
        return {k: trained[k] - start[k] for k in trained if self.trainable(k)}

    def snapshot_steps(self, rnd: int, local_steps: int) -> list[int]:
        """Local steps (1-based, before the last) after which the client's adapter is captured for
        client_upload (see the module docstring). Default: none."""
        return []

    def trainable(self, name: str) -> bool:
        return True

    def client_trainable(self, state: Tensors):
        """What the client trains this round, as a name -> bool test, decided from its state after
        client_receive (for methods whose trained tensors change between phases). Default: trainable."""
        return self.trainable

    def data_slice(self, rnd: int) -> tuple[float, float]:
        """Fraction [lo, hi) of each client's training examples used in round `rnd` (phased methods
        such as CG-FedLLM pre-train on one slice and fine-tune on the rest)."""
        return (0.0, 1.0)

    def eval_adapter(self, client: int, state: Tensors) -> Tensors:
        """The adapter to evaluate on `client`'s held-out data."""
        return self.global_adapter()

    def final_adapter(self, client_states: list[Tensors]) -> Tensors:
        """What the run saves as adapter/ (and judges on the out-of-domain set)."""
        return self.global_adapter()
