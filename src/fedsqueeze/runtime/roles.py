"""The two roles of a round, written once and wired by every runtime (in-process or Flower).

ServerRole: broadcast -> encode (one blob per client), decode uploads, aggregate, the round's base record.
ClientRole: decode the broadcast, train, build the upload, encode it (with its error feedback).
Between them travel only bytes; the ledger counts len() of each.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import replace

from ..client import train_client
from ..codecs import PayloadError
from ..codecs.wire import Message, as_message, message_tensors, read_message
from ..metrics import Ledger
from ..metrics.ledger import DOWN, UP
from ..metrics.memory import merge_peaks, peaks, reset_peaks
from ..strategies import ClientUpdate
from ..strategies.base import ClientTurn
from ..tensors import Tensors, fp32_bytes, prefixed, relative_error, unnested, unprefixed
from .admission import Candidate, admission_of, screen
from .claims import cap_updates, claims_counted, weight_of
from .client_eval import score
from .filters import ClientRound, filters_for
from .reply import Receipt, Reply, Upload
from .session import Session
from .state_store import StateStore


def _quiet(_: str) -> None: ...


class ClientRole:
    """One data owner. All it keeps across rounds is in `state_dict()` (Flower: context.state).
    Cross-cutting features (snapshots, local DP, faults) are upload filters around its round
    (runtime/filters/)."""

    def __init__(self, session: Session, client: int):
        self.s = session
        self.client = client
        self.state: Tensors = {}
        self.sender = session.uplink_sender()
        self.decoder = session.downlink_decoder()
        self.filters = filters_for(session, client)

    def handle(
        self,
        rnd: int,
        down_blob: bytes | None,
        on_step=None,
        steps: int | None = None,
        seconds: float | None = None,
        judge: bool = False,
    ) -> Reply:
        """This client's round: its reply to `down_blob` (None: nothing was sent to it). steps /
        seconds: the partial-work limit of the round's close rule (client.train_client). judge: first
        score the adapter received on this owner's held-out split (eval.ride); the sums go in `Reply.eval`."""
        s, method, filters = self.s, self.s.client_method, self.filters
        turn = ClientTurn(rnd, self.client)
        reset_peaks(s.placement.device)
        t0 = time.perf_counter()
        message = read_message(self.decoder.decode(down_blob)) if down_blob is not None else None
        decode_s = time.perf_counter() - t0
        start = method.client_receive(self.state, message, turn=turn)
        judged = score(s, self.client, start) if judge else None  # before training: what it received
        up = ClientRound(s, self.client, turn, self.state, start, start, method.client_trainable(self.state))
        counter = itertools.count(1)

        def step(loss: float) -> None:
            n = next(counter)
            for f in filters:
                f.step(up, n)
            if on_step:
                on_step(loss)

        try:
            for f in filters:
                f.begin(up)
            up.trained, losses = train_client(
                s, self.client, rnd, start, on_step=step, steps=steps, seconds=seconds, trainable=up.keep
            )
            for f in filters:
                f.before_upload(up)
            made = method.client_upload(up.state, up.start, up.trained, turn=turn)
            upload = None if made is None else as_message(made)
            for f in filters:
                upload = f.upload(up, upload)
            reply = replace(self._encode(upload, losses, decode_s), eval=judged)
            for f in filters:
                reply = f.reply(up, reply, upload)
            return reply
        finally:
            for f in filters:
                f.after(up)

    def _encode(self, upload: Message | None, losses: list[float], decode_s: float) -> Reply:
        s = self.s
        reply = Reply(
            blob=None,
            num_examples=s.federation.clients[self.client].num_examples,
            steps=len(losses),
            train_loss=sum(losses) / len(losses),
            down_decode_s=decode_s,
            peaks=peaks(s.placement.device),
        )
        if upload is None:
            return reply
        tensors = message_tensors(upload)
        t0 = time.perf_counter()
        blob = self.sender.encode(tensors)
        encode_s = time.perf_counter() - t0
        # What the server will see, for the ledger's error column (the blob is what it decodes).
        received = self.sender.last_received  # the codec's own reconstruction: no second decode
        return replace(
            reply,
            blob=blob,
            up_encode_s=encode_s,
            up_rel_error=relative_error(tensors, received) if received is not None else 0.0,
            up_raw_bytes=fp32_bytes(tensors),
        )

    def state_dict(self) -> Tensors:
        state = {**prefixed("state/", self.state), **prefixed("sender/", self.sender.state_dict())}
        for f in self.filters:
            state.update(f.state_dict())
        return state

    def load_state_dict(self, state: Tensors) -> None:
        self.state = {k: v.clone() for k, v in unprefixed("state/", state).items()}
        self.sender.load_state_dict(unprefixed("sender/", state))
        for f in self.filters:
            f.load_state_dict(state)


class ServerRole:
    """store: what the server keeps per client (its downlink sender, the method's view of that
    client), read while the client is being sent to and put back after."""

    def __init__(self, session: Session, store: StateStore):
        self.s = session
        self.method = session.method
        self.admission = admission_of(self.method)
        self.store = store
        self.decoder = session.uplink_decoder()
        self.ledger = Ledger()
        self.updates: list[ClientUpdate] = []
        self.train_losses: dict[int, float | None] = {}
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
        message = as_message(message)
        tensors = message_tensors(message)
        t0 = time.perf_counter()
        blob = sender.encode(tensors)
        t1 = time.perf_counter()
        decoded = sender.last_received  # None: lossless, the client decodes `tensors`
        self.method.delivered(rnd, c, message if decoded is None else read_message(decoded))
        err = relative_error(tensors, decoded) if decoded is not None else 0.0
        self.ledger.add(rnd, c, DOWN, len(blob), fp32_bytes(tensors), err, t1 - t0, 0.0)
        return blob

    # ---- uploads -------------------------------------------------------------------------------
    def receive(self, rnd: int, uploads: list[Upload], log: Callable[[str], None] = _quiet) -> Receipt:
        """Takes a round's uploads (in the order they are to be applied): checks each reply, bills
        its blob, drops the too stale, decodes, screens the decoded ones together (norms are judged
        against each other) and admits those that pass. The rest are logged and left out."""
        got = Receipt()
        local_steps = self.s.local_steps
        max_staleness = self.s.cfg.hybrid.max_staleness
        decoded: list[tuple[Upload, Reply, int, Tensors | None]] = []
        for up in uploads:
            if up.error is not None or up.reply is None:
                log(f"round {rnd}: client {up.client} failed ({up.error}): left out")
                if up.gone and up.origin == rnd:
                    self.ledger.mark_undelivered(rnd, up.client)
                continue
            got.arrived.append(up.client)
            reply = up.reply
            problem = reply.problem(local_steps, loss_withheld=self.loss_withheld)
            if problem is not None:
                if isinstance(reply.blob, bytes):  # its bytes crossed the wire all the same
                    self.ledger.add(rnd, up.client, UP, len(reply.blob), 0, 0.0, 0.0, 0.0)
                got.rejected[up.client] = f"bad reply: {problem}"
                continue
            if reply.steps < local_steps:
                got.partial[str(up.client)] = reply.steps  # the steps it had time for
            staleness = rnd - up.origin
            if staleness > max_staleness:
                # Too old to help; its bytes crossed the wire all the same.
                log(
                    f"round {rnd}: dropped client {up.client}'s update from round {up.origin} "
                    f"(staleness {staleness} > {max_staleness})"
                )
                if reply.blob is not None:
                    self._bill_upload(rnd, up.client, reply, 0.0)
                got.dropped.append(up.client)
                continue
            decoded.append((up, reply, staleness, self._decode(rnd, up.client, reply, got.rejected)))
        # Per-owner data: only the client knows its count; its claim is capped in close_round instead.
        known = None if claims_counted(self.s) else self.s.federation.clients
        candidates = [
            Candidate(up.client, tensors, reply.num_examples, known[up.client].num_examples if known else None)
            for up, reply, _, tensors in decoded
            if tensors is not None
        ]
        server = self.s.cfg.server
        if self.noise is not None:  # one client's admission may not depend on the others' data
            server = server.model_copy(update={"norm_factor": None})
        got.rejected.update(screen(self.admission, rnd, candidates, server))
        for up, reply, staleness, tensors in decoded:
            if up.client in got.rejected:
                log(f"round {rnd}: rejected client {up.client}'s upload: {got.rejected[up.client]}")
                continue
            if staleness:
                got.stale[str(up.client)] = staleness
            self._admit(up.client, tensors, reply, staleness)
        return got

    @property
    def loss_withheld(self) -> bool:
        """Clients keep their train loss to themselves (local DP)."""
        return self.s.privacy is not None and self.s.privacy.mode == "local"

    def _decode(self, rnd: int, client: int, reply: Reply, rejected: dict[int, str]) -> Tensors | None:
        """The upload's tensors (None: nothing sent, or rejected as undecodable); billed either way."""
        if reply.blob is None:
            return None
        t0 = time.perf_counter()
        try:
            return dict(read_message(self.decoder.decode(reply.blob, self.admission.accepts)))
        except PayloadError as exc:
            rejected[client] = f"undecodable: {exc}"
            return None
        finally:
            self._bill_upload(rnd, client, reply, time.perf_counter() - t0)

    def _admit(self, client: int, tensors: Tensors | None, reply: Reply, staleness: int = 0) -> None:
        """Takes a checked upload into the round (None: a method that sends nothing)."""
        self.train_losses[client] = reply.train_loss
        self.client_peaks.append(reply.peaks)
        if tensors is not None:
            num_examples = weight_of(self.s, client, reply.num_examples)  # a claim where only the client knows
            self.updates.append(ClientUpdate(client, tensors, num_examples, staleness))

    def _bill_upload(self, rnd: int, client: int, reply: Reply, decode_s: float) -> None:
        assert reply.blob is not None
        self.ledger.add(
            rnd, client, UP, len(reply.blob), reply.up_raw_bytes, reply.up_rel_error, reply.up_encode_s, decode_s
        )

    def close_round(self, rnd: int) -> dict:
        """Aggregates what arrived (in client order, so arrival order never changes the result) and
        returns the round's record so far: clients, bytes, train loss, the method's metrics."""
        updates = sorted(self.updates, key=lambda u: u.client)
        updates, capped = cap_updates(self.s, updates)  # claims above server.max_client_weight
        # Central DP wraps the method's aggregate: clip, noise, then the method's dp_aggregate.
        aggregate = self.noise.around(self.method) if self.noise is not None else self.method.aggregate
        method_metrics = aggregate(rnd, updates)
        record = {"round": rnd, "clients": [u.client for u in updates] or sorted(self.train_losses)}
        record.update(self.ledger.round_summary(rnd))
        losses = [self.train_losses[c] for c in sorted(self.train_losses)]
        # NaN when nobody reported one, or when clients withhold theirs (local DP)
        known = [x for x in losses if x is not None]
        record["train_loss"] = sum(known) / len(known) if known and len(known) == len(losses) else float("nan")
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

    def sampling_key(self) -> str | int:
        """What seeds the round's client sample: under central DP the server's secret (the
        accountant's amplification by sampling needs a sample nobody can recompute), else the seed."""
        return self.noise.sampling_seed if self.noise is not None else self.s.cfg.seed

    # ---- checkpoints ---------------------------------------------------------------------------
    def checkpoint(self) -> tuple[Tensors, dict]:
        """The server's tensors and its part of the checkpoint's metadata (the per-client store,
        flushed now, and the placement last recorded)."""
        return self.state_dict(), {"server_store": self.store.flush(), "placement": self.recorded_placement}

    def committed(self) -> None:
        """The checkpoint is written: state files it no longer names may go."""
        self.store.prune()

    def restore(self, state: Tensors, meta: dict) -> None:
        self.store.load(meta.get("server_store", {}))
        self.load_state_dict(state)
        self.recorded_placement = meta.get("placement")

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
