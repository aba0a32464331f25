"""The two roles of a round, written once and wired by every runtime (in-process or Flower).

ServerRole: broadcast -> encode (one blob per client), decode uploads, aggregate, the round's base record.
ClientRole: decode the broadcast, train, build the upload, encode it (with its error feedback).
Between them travel only bytes; the ledger counts len() of each.
"""

from __future__ import annotations

import itertools
import time

import torch

from ..client import faults, train_client
from ..codecs import build_codec
from ..metrics import Ledger
from ..metrics.ledger import DOWN, UP
from ..metrics.memory import merge_peaks, peaks, reset_peaks
from ..strategies import ClientUpdate
from ..strategies.base import SNAPSHOT, from_wire, to_wire, without_markers
from ..tensors import Tensors, fp32_bytes, prefixed, relative_error, unnested, unprefixed
from .claims import cap_updates, weight_of
from .session import Session
from .state_store import StateStore


class ClientRole:
    """One data owner. All it keeps across rounds is in `state_dict()` (Flower: context.state)."""

    def __init__(self, session: Session, client: int):
        self.s = session
        self.client = client
        self.state: Tensors = {}
        self.sender = session.uplink_sender()
        self.decoder = session.downlink_decoder()
        plan = session.privacy
        self.noise = None
        if plan is not None and plan.mode == "local":
            from ..privacy.local import LocalNoise

            self.noise = LocalNoise(plan, client)

    def handle(
        self, rnd: int, down_blob: bytes | None, on_step=None, steps: int | None = None, seconds: float | None = None
    ) -> tuple[bytes | None, dict]:
        """steps / seconds: the partial-work limit of the round's close rule (client.train_client)."""
        s, method = self.s, self.s.method
        reset_peaks(s.placement.device)
        t0 = time.perf_counter()
        message = from_wire(self.decoder.decode(down_blob)) if down_blob is not None else None
        decode_s = time.perf_counter() - t0
        method.begin_client(rnd, self.client)
        start = method.client_receive(self.state, message)
        wanted = set(method.snapshot_steps(rnd, s.local_steps))
        snapshots: Tensors = {}
        counter = itertools.count(1)

        def step(loss: float) -> None:
            n = next(counter)
            if n in wanted:
                snapshots.update(prefixed(f"{SNAPSHOT}{n}/", s.adapter.get()))
            if on_step:
                on_step(loss)

        keep = method.client_trainable(self.state)
        trained, losses = train_client(
            s, self.client, rnd, start, on_step=step, steps=steps, seconds=seconds, trainable=keep
        )
        metrics = {
            "train_loss": sum(losses) / len(losses),
            "down_decode_s": decode_s,
            "steps": len(losses),
            "num_examples": s.federation.clients[self.client].num_examples,
            **peaks(s.placement.device),
        }
        select_first = self.noise is not None and s.cfg.privacy.order == "select-first"
        if self.noise is not None:
            metrics["train_loss"] = float("nan")  # a clean statistic of the data: it stays here
            if not select_first:  # the method sees only the noised update (docs/PRIVACY.md)
                trained = self.noise.noise_first(rnd, start, trained, keep)
        self.state.update(snapshots)  # for this call only: client_upload may also write state
        try:
            upload = method.client_upload(self.state, start, trained)
        finally:
            for key in snapshots:
                self.state.pop(key, None)
        if select_first and upload is not None:
            upload = self.noise.select_first(rnd, upload)
        blob = None
        if upload is not None:
            t0 = time.perf_counter()
            blob = self.sender.encode(upload)
            metrics["up_encode_s"] = time.perf_counter() - t0
            # What the server will see, for the ledger's error column (the blob is what it decodes).
            received = self.sender.last_received  # the codec's own reconstruction: no second decode
            metrics["up_rel_error"] = relative_error(upload, received) if received is not None else 0.0
            metrics["up_raw_bytes"] = fp32_bytes(upload)
        if faults.applies(s.cfg.faults, self.client, rnd):
            blob, metrics = faults.spoil(s.cfg.faults, s.cfg.seed, self.client, rnd, upload, blob, metrics, self._raw)
        return blob, metrics

    def _raw(self, tensors: Tensors) -> bytes:
        """A faulty client's blob: the uplink's codec, fresh (the client's own keeps its honest
        state), or plain fp32 where that codec refuses the values (quantize and NaN)."""
        try:
            return build_codec(self.s.uplink_spec, self.s.adapter.layout).encode(tensors)
        except ValueError:
            return build_codec("fp32", self.s.adapter.layout).encode(tensors)

    def state_dict(self) -> Tensors:
        state = {**prefixed("state/", self.state), **prefixed("sender/", self.sender.state_dict())}
        if self.noise is not None and self.noise.secret is not None:  # the client's own; never sent
            state["privacy/secret"] = torch.tensor([self.noise.secret], dtype=torch.int64)
        return state

    def load_state_dict(self, state: Tensors) -> None:
        self.state = {k: v.clone() for k, v in unprefixed("state/", state).items()}
        self.sender.load_state_dict(unprefixed("sender/", state))
        if self.noise is not None and "privacy/secret" in state:
            self.noise.secret = int(state["privacy/secret"][0])


class ServerRole:
    """store: what the server keeps per client (its downlink sender, the method's view of that
    client), read while the client is being sent to and put back after."""

    def __init__(self, session: Session, store: StateStore):
        self.s = session
        self.method = session.method
        self.store = store
        self.decoder = session.uplink_decoder()
        self.ledger = Ledger()
        self.updates: list[ClientUpdate] = []
        self.train_losses: dict[int, float] = {}
        self.client_peaks: list[dict] = []
        self.placement = {"device": str(session.placement.device), "precision": session.placement.precision}
        self.recorded_placement: dict | None = None
        self.noise = None  # central DP: the server's clipping and noise (privacy/central.py)
        if session.privacy is not None and session.privacy.mode == "central":
            from ..privacy.central import CentralNoise

            self.noise = CentralNoise(session.privacy)

    def broadcast(self, rnd: int, clients: list[int]) -> dict[int, bytes | None]:
        """The round's downlink; every round starts here, so the round's memory peak starts here too."""
        reset_peaks(self.s.placement.device)
        blobs = {}
        for c in clients:
            sender = self.s.downlink_sender()
            kept = self.store.get(c)
            sender.load_state_dict(unprefixed("down/", kept))
            self.method.attach_client(c, unprefixed("method/", kept))
            try:
                blobs[c] = self._send(rnd, c, sender)
            finally:
                state = {**prefixed("down/", sender.state_dict()), **prefixed("method/", self.method.detach_client(c))}
                if state or c in self.store:
                    self.store.put(c, state)
        return blobs

    def _send(self, rnd: int, c: int, sender) -> bytes | None:
        message = self.method.broadcast(rnd, c)
        if message is None:
            return None
        tensors = to_wire(message)
        t0 = time.perf_counter()
        blob = sender.encode(tensors)
        t1 = time.perf_counter()
        decoded = sender.last_received  # None: lossless, the client decodes `tensors`
        self.method.delivered(rnd, c, message if decoded is None else from_wire(decoded))
        err = relative_error(tensors, decoded) if decoded is not None else 0.0
        self.ledger.add(rnd, c, DOWN, len(blob), fp32_bytes(tensors), err, t1 - t0, 0.0)
        return blob

    def decode(self, rnd: int, client: int, blob: bytes, metrics: dict) -> Tensors:
        """Bills the upload, then decodes it (PayloadError for a blob that cannot be decoded safely)."""
        t0 = time.perf_counter()
        try:
            return without_markers(self.decoder.decode(blob, self.method.accepts))
        finally:
            self._bill_upload(rnd, client, blob, metrics, time.perf_counter() - t0)

    def admit(self, client: int, tensors: Tensors | None, metrics: dict, staleness: int = 0) -> None:
        """Takes a checked upload into the round (None: a method that sends nothing)."""
        self.train_losses[client] = metrics["train_loss"]
        self.client_peaks.append(metrics)
        if tensors is not None:
            num_examples = weight_of(self.s, client, metrics)  # a claim where only the client knows
            self.updates.append(ClientUpdate(client, tensors, num_examples, staleness))

    def count_dropped(self, rnd: int, client: int, blob: bytes | None, metrics: dict) -> None:
        """An upload that arrived too stale to use: not aggregated, but its bytes are on the bill."""
        if blob is not None:
            self._bill_upload(rnd, client, blob, metrics, 0.0)

    def _bill_upload(self, rnd: int, client: int, blob: bytes, metrics: dict, decode_s: float) -> None:
        self.ledger.add(
            rnd,
            client,
            UP,
            len(blob),
            metrics.get("up_raw_bytes", 0),
            metrics.get("up_rel_error", 0.0),
            metrics.get("up_encode_s", 0.0),
            decode_s,
        )

    def close_round(self, rnd: int) -> dict:
        """Aggregates what arrived (in client order, so arrival order never changes the result) and
        returns the round's record so far: clients, bytes, train loss, the method's metrics."""
        updates = sorted(self.updates, key=lambda u: u.client)
        updates, capped = cap_updates(self.s, updates)  # claims above server.max_client_weight
        if self.noise is not None:
            method_metrics = self.noise.aggregate(self.method, rnd, updates)
        else:
            method_metrics = self.method.aggregate(rnd, updates)
        record = {"round": rnd, "clients": [u.client for u in updates] or sorted(self.train_losses)}
        record.update(self.ledger.round_summary(rnd))
        losses = [self.train_losses[c] for c in sorted(self.train_losses)]
        record["train_loss"] = sum(losses) / len(losses) if losses else float("nan")
        record.update(method_metrics or {})
        if capped:
            record["capped"] = capped
        if self.s.privacy is not None:
            record["epsilon"] = self.s.privacy.epsilon(rnd)  # a bound for every client after rnd rounds
        self.updates, self.train_losses = [], {}
        self.ledger.drop_round(rnd)
        return record

    def round_peaks(self) -> dict:
        """The round's memory peaks: this process's since broadcast and what its clients reported."""
        found = merge_peaks(peaks(self.s.placement.device), *self.client_peaks)
        self.client_peaks = []
        return found

    def placement_if_new(self) -> dict:
        """Device and precision for the first record, and again where a resume changed them."""
        if self.recorded_placement == self.placement:
            return {}
        self.recorded_placement = self.placement
        return dict(self.placement)

    def state_dict(self) -> Tensors:
        """The server's own state; what it keeps per client is in the store (flushed with it)."""
        state = prefixed("method/", self.method.state_dict())
        if self.noise is not None:  # its secret too, so a resumed run draws the same noise
            state.update(prefixed("privacy/", self.noise.state_dict()))
        return state

    def load_state_dict(self, state: Tensors) -> None:
        self.method.load_state_dict(unprefixed("method/", state))
        if self.noise is not None:
            self.noise.load_state_dict(unprefixed("privacy/", state))
        for c, sender in unnested("down/", state).items():  # a checkpoint from before the store
            self.store.put(c, prefixed("down/", sender))
