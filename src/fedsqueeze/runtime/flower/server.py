"""The server's loop over a Flower Grid: the very ServerRole of the in-process runtime, wired to
messages instead of method calls, and the same run directory (rounds.jsonl, checkpoint/, finish()).

Per round: ask new nodes which partition they hold, sample clients, encode one downlink blob per
client, send them, wait up to `runtime.round_timeout` seconds, decode the uploads in client order,
aggregate. A client whose node errors, times out or is not connected is logged and left out.

Hybrid mode (hybrid.quorum < 1 or hybrid.deadline) runs on the real clock: the round closes once
the quorum of its clients has answered or hybrid.deadline seconds have passed; the others stay in
flight (not sampled again meanwhile) and their replies join the round in which they arrive, with
their staleness, as in the in-process runtime. A reply still missing after runtime.round_timeout
is given up (logged). In-flight replies do not survive a server restart.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from ...errors import UserError
from .. import rundir
from ..checkpoint import load_checkpoint, prefixed, save_checkpoint, unprefixed
from ..clock import quorum_count
from ..local import finish
from ..roles import ServerRole
from ..session import Session
from . import wire
from .client_app import NUM_PARTITIONS, PARTITION_ID


@dataclass
class Pending:
    client: int
    origin: int  # the round it was sent in
    sent: float  # time.monotonic() when it was pushed


class FlowerServer:
    def __init__(self, session: Session, out: Path, grid: Grid, log=print):
        method = session.method
        if method.personalized or method.pooled:
            raise UserError(f"method {session.cfg.method!r} sends nothing over the wire (each client keeps its "
                            "own adapter, or all data is pooled): run it with runtime.kind = \"local\"")
        self.s, self.out, self.grid, self.log = session, out, grid, log
        self.rt = session.cfg.runtime
        self.server = ServerRole(session)
        self.nodes: dict[int, int] = {}  # partition id -> node id
        self.ignored: set[int] = set()  # nodes whose partition does not fit this federation
        self.done = 0
        self.elapsed = 0.0
        self.hybrid = session.cfg.hybrid
        self.asynchronous = self.hybrid.quorum < 1 or self.hybrid.deadline is not None
        self.in_flight: dict[str, Pending] = {}  # message id -> the train message it answers
        # Client state lives on the clients (context.state); the server evaluates the global adapter.
        self.no_client_states = [{} for _ in range(session.num_clients)]

    # ---- nodes -----------------------------------------------------------------------------------
    def discover(self) -> None:
        """Asks every node not seen yet which partition it holds."""
        known = set(self.nodes.values()) | self.ignored
        new = [n for n in self.grid.get_node_ids() if n not in known]
        if not new:
            return
        queries = [Message(content=RecordDict(), dst_node_id=n, message_type=wire.QUERY) for n in new]
        for query, reply in exchange(self.grid, queries, self.rt.round_timeout):
            node = query.metadata.dst_node_id
            if reply is None or reply.has_error():
                # Not asked again: a broken node would otherwise cost a timeout every round.
                why = f"no answer within {self.rt.round_timeout} s" if reply is None else reply.error.reason
                self.log(f"node {node} did not say which partition it holds ({why}): ignored in this run")
                self.ignored.add(node)
                continue
            info = reply.content.config_records[wire.INFO]
            partition, partitions = int(info[PARTITION_ID]), int(info[NUM_PARTITIONS])
            if partitions != self.s.num_clients or not 0 <= partition < partitions:
                self.log(f"node {node} holds partition {partition} of {partitions}, but this federation has "
                         f"{self.s.num_clients} clients: ignored")
                self.ignored.add(node)
                continue
            if partition in self.nodes:
                self.log(f"partition {partition} moved from node {self.nodes[partition]} to node {node}")
            self.nodes[partition] = node

    def wait_for_nodes(self) -> None:
        """Until every partition has a node, or runtime.connect_timeout passes (then go on with those there)."""
        deadline = time.monotonic() + self.rt.connect_timeout
        while True:
            self.discover()
            if len(self.nodes) == self.s.num_clients or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        missing = sorted(set(range(self.s.num_clients)) - set(self.nodes))
        self.log(f"{len(self.nodes)} of {self.s.num_clients} clients connected" +
                 (f"; missing partitions {missing}" if missing else ""))
        if not self.nodes:
            raise UserError(f"no SuperNode connected within runtime.connect_timeout = {self.rt.connect_timeout} s")

    # ---- rounds ----------------------------------------------------------------------------------
    def run_round(self, rnd: int) -> dict:
        t0 = time.perf_counter()
        self.discover()
        busy = {p.client for p in self.in_flight.values()}
        sampled = self.s.sample_clients(rnd, among=[c for c in range(self.s.num_clients) if c not in busy])
        reachable = [c for c in sampled if c in self.nodes]
        if len(reachable) < len(sampled):
            self.log(f"round {rnd}: no node for clients {sorted(set(sampled) - set(reachable))}: left out")
        blobs = self.server.broadcast(rnd, reachable)
        # Partial work on the real clock: the client trains while its steps fit in 80% of the
        # deadline; the rest is left for the transfers, which it cannot time itself.
        budget = 0.8 * self.hybrid.deadline if self.hybrid.partial_work else None
        messages = [wire.train_message(self.nodes[c], rnd, c, blobs[c], budget) for c in reachable]
        now = time.monotonic()
        for client, mid in zip(reachable, push(self.grid, messages)):
            self.in_flight[mid] = Pending(client, rnd, now)
        replies = collect(self.grid, set(self.in_flight), self._wait(), self._closes(rnd, len(reachable)))

        arrived: dict[int, tuple[int, Message]] = {}  # client -> (origin round, reply)
        for mid, reply in replies.items():
            pending = self.in_flight.pop(mid)
            if reply.has_error():
                self.log(f"round {rnd}: client {pending.client} failed ({reply.error.reason}): left out")
            else:
                arrived[pending.client] = (pending.origin, reply)
        now = time.monotonic()
        for mid, pending in list(self.in_flight.items()):
            if not self.asynchronous or now - pending.sent >= self.rt.round_timeout:
                del self.in_flight[mid]
                self.log(f"round {rnd}: no answer from client {pending.client} within "
                         f"{self.rt.round_timeout} s: left out")
        if not arrived and not self.in_flight:
            raise UserError(f"round {rnd}: no client answered; stopped after round {self.done} "
                            "(the last finished round is checkpointed)")
        stale, dropped, partial = {}, [], {}
        for client in sorted(arrived):  # client order, so arrival order never changes the result
            origin, reply = arrived[client]
            staleness, content = rnd - origin, reply.content
            blob, metrics = wire.unpack(content, "up"), wire.reply_metrics(content)
            if metrics.get("steps", self.s.local_steps) < self.s.local_steps:
                partial[str(client)] = int(metrics["steps"])
            if staleness > self.hybrid.max_staleness:
                self.log(f"round {rnd}: dropped client {client}'s update from round {origin} "
                         f"(staleness {staleness} > {self.hybrid.max_staleness})")
                self.server.count_dropped(rnd, client, blob, metrics)
                dropped.append(client)
                continue
            if staleness:
                stale[str(client)] = staleness
            self.server.receive(rnd, client, blob, metrics, staleness)
        record = self.server.finish_round(rnd, sampled, self.no_client_states, time.perf_counter() - t0)
        applied = sorted(set(arrived) - set(dropped))
        late = sorted(p.client for p in self.in_flight.values())
        record["clients"] = applied
        record["left_out"] = sorted(set(sampled) - set(arrived) - set(late))
        if self.asynchronous:
            record.update(late=late, stale=stale)
            if dropped:
                record["dropped"] = dropped
        if self.hybrid.partial_work:
            record["partial"] = partial  # client -> local steps it had time for
        return record

    def _wait(self) -> float:
        if self.hybrid.deadline is None:
            return self.rt.round_timeout
        return min(self.rt.round_timeout, self.hybrid.deadline)

    def _closes(self, rnd: int, sent: int):
        """When the round may close early: all of its clients answered, or (hybrid) the quorum."""
        need = quorum_count(self.hybrid, sent)

        def enough(replied: set[str]) -> bool:
            if not sent:  # nobody new to wait for: close on the first late reply
                return bool(replied)
            return sum(1 for mid in replied if self.in_flight[mid].origin == rnd) >= need
        return enough

    def run(self) -> dict:
        rounds = self.s.cfg.train.rounds
        if self.done < rounds:
            self.wait_for_nodes()
        for rnd in range(self.done + 1, rounds + 1):
            record = self.run_round(rnd)
            self.elapsed += record["seconds"]
            self.done = rnd
            rundir.append_round(self.out, record)
            self.save()
            self.log(_round_line(record))
        return finish(self.s, self.out, self.no_client_states, self.done, self.elapsed)

    # ---- checkpoints (same files as the in-process runtime, server part only) ---------------------
    def save(self) -> None:
        save_checkpoint(self.out, prefixed("server/", self.server.state_dict()),
                        {"round": self.done, "seconds": self.elapsed, "runtime": "flower",
                         "in_flight": len(self.in_flight), "placement": self.server.recorded_placement})

    def restore(self) -> None:
        state, meta = load_checkpoint(self.out)
        self.server.load_state_dict(unprefixed("server/", state))
        if meta.get("in_flight"):
            self.log("resuming on Flower: updates that were in flight when the server stopped are not awaited")
        if any(k.startswith("client/") for k in state):
            self.log("resuming on Flower: the checkpoint's client state (error-feedback memory) stays behind; "
                     "clients start from empty state")
        self.done, self.elapsed = meta["round"], meta["seconds"]
        self.server.recorded_placement = meta.get("placement")
        rundir.truncate_rounds(self.out, self.done)


def push(grid: Grid, messages: list[Message]) -> list[str]:
    """Sends `messages`; returns their ids (Flower's grids stamp each message as they push it)."""
    returned = [str(i) for i in grid.push_messages(messages)]
    ids = [m.metadata.message_id for m in messages]
    return ids if all(ids) else returned


def collect(grid: Grid, ids: set[str], timeout: float, enough=None, poll: float = 0.5) -> dict[str, Message]:
    """Replies to the messages `ids`, by the id they answer, pulled every `poll` seconds until all
    came, `enough(ids replied so far)` holds, or `timeout` seconds passed. Matched by message id,
    not by sender: a SuperLink answers for a node that went offline with an error of its own.
    (Grid.send_and_receive waits 3 s between pulls, which would add seconds to every round.)"""
    waiting, replies = set(ids), {}
    deadline = time.monotonic() + timeout
    while waiting:
        for reply in grid.pull_messages(list(waiting)):
            replies[reply.metadata.reply_to_message_id] = reply
        waiting -= replies.keys()
        if not waiting or (enough and enough(set(replies))) or time.monotonic() >= deadline:
            break
        time.sleep(poll)
    return replies


def exchange(grid: Grid, messages: list[Message], timeout: float, poll: float = 0.5):
    """Sends `messages` and pairs each with its reply (None if none came within `timeout` seconds)."""
    ids = push(grid, messages)
    replies = collect(grid, set(ids), timeout, poll=poll)
    return [(m, replies.get(i)) for m, i in zip(messages, ids)]


def serve(grid: Grid, cfg, out: Path, resume: bool = False, log=print) -> dict:
    """Runs (or resumes) a whole fedsqueeze run over `grid`; returns the summary."""
    session = Session.build(cfg, log=log)
    server = FlowerServer(session, out, grid, log)
    if resume:
        server.restore()
        (out / rundir.CONFIG).write_text(cfg.to_toml())
    log(f"method {cfg.method} | uplink {session.uplink_spec} | downlink {session.downlink_spec} | "
        f"{session.num_clients} clients | round timeout {cfg.runtime.round_timeout} s")
    log(f"server: {session.placement.describe()} (each client resolves train.device on its own machine)")
    if server.asynchronous:
        log(f"hybrid: a round closes at a quorum of {cfg.hybrid.quorum:g} of its clients"
            + (f" or after {cfg.hybrid.deadline:g} s" if cfg.hybrid.deadline is not None else "")
            + "; late replies join the round in which they arrive")
    return server.run()


def _round_line(r: dict) -> str:
    line = (f"round {r['round']}: clients {r['clients']} | up {r['bytes_up']:,} B | down {r['bytes_down']:,} B | "
            f"train loss {r['train_loss']:.4f}")
    if "eval_loss" in r:
        line += f" | eval loss {r['eval_loss']:.4f}"
    return line + f" | {r['seconds']:.1f} s"
