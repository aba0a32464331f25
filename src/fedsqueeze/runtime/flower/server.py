"""The server's side of a Flower Grid as a Transport: the driver's round, wired to messages.

Per round the transport asks new nodes which partition they hold, sends one train message per
reachable client with its downlink blob, and pulls replies while the driver waits (its close rule;
`runtime.round_timeout` is the transport's patience). A client whose node errors is reported as
failed. In-flight replies do not survive a server restart.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from flwr.app import Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from ...errors import UserError
from ...tensors import Tensors
from ..progress import LogProgress
from ..reply import Upload
from ..session import Session
from . import wire
from .client_app import NUM_PARTITIONS, PARTITION_ID
from .node_data import server_data

# A client times its own training, not the transfers: it gets this share of the rule's budget.
WORK_SHARE = 0.8
POLL = 0.5  # seconds between pulls (Grid.send_and_receive waits 3 s, which would add seconds to rounds)


@dataclass
class Pending:
    client: int
    origin: int  # the round it was sent in
    sent: float  # time.monotonic() when it was pushed


class GridTransport:
    remote = True
    simulated = False
    rides_eval = True  # a train message may ask its owner to judge what it received (eval.ride)

    def __init__(self, session: Session, grid: Grid, log=print):
        self.s, self.log = session, log
        self.grid = wire.MeteredGrid(grid)  # Flower's serialized bytes per round (wire_down / wire_up)
        self.rt = session.cfg.runtime
        self.nodes: dict[int, int] = {}  # partition id -> node id
        self.ignored: set[int] = set()  # nodes whose partition does not fit this federation
        self.pending: dict[str, Pending] = {}  # message id -> the train message it answers
        self.patience = float(self.rt.round_timeout)

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
                self.log(
                    f"node {node} holds partition {partition} of {partitions}, but this federation has "
                    f"{self.s.num_clients} clients: ignored"
                )
                self.ignored.add(node)
                continue
            if partition in self.nodes:
                self.log(f"partition {partition} moved from node {self.nodes[partition]} to node {node}")
            self.nodes[partition] = node

    def start(self) -> None:
        """Until every partition has a node, or runtime.connect_timeout passes (then go on with those there)."""
        deadline = time.monotonic() + self.rt.connect_timeout
        while True:
            self.discover()
            if len(self.nodes) == self.s.num_clients or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        missing = sorted(set(range(self.s.num_clients)) - set(self.nodes))
        self.log(
            f"{len(self.nodes)} of {self.s.num_clients} clients connected"
            + (f"; missing partitions {missing}" if missing else "")
        )
        if not self.nodes:
            raise UserError(f"no SuperNode connected within runtime.connect_timeout = {self.rt.connect_timeout} s")

    def reachable(self, clients: list[int]) -> list[int]:
        """Only nodes the SuperLink still lists: a blob for a node known gone would be billed but
        never cross the wire."""
        online = set(self.grid.get_node_ids())
        for partition, node in list(self.nodes.items()):
            if node not in online:
                self.log(f"node {node} of client {partition} is no longer connected")
                del self.nodes[partition]
        self.discover()
        found = [c for c in clients if c in self.nodes]
        if len(found) < len(clients):
            self.log(f"no node for clients {sorted(set(clients) - set(found))}: left out")
        return found

    # ---- messages --------------------------------------------------------------------------------
    def in_flight(self) -> dict[int, int]:
        return {p.client: p.origin for p in self.pending.values()}

    def client_states(self) -> list[Tensors]:
        return [{} for _ in range(self.s.num_clients)]  # they live on the clients (context.state)

    def now(self) -> float:
        return time.monotonic()

    def send(
        self,
        rnd: int,
        blobs: dict[int, bytes | None],
        work_seconds: float | None,
        progress,
        judge: frozenset[int] = frozenset(),
    ) -> None:
        budget = WORK_SHARE * work_seconds if work_seconds is not None else None
        messages = [wire.train_message(self.nodes[c], rnd, c, blob, budget, c in judge) for c, blob in blobs.items()]
        now = time.monotonic()
        for client, mid in zip(blobs, push(self.grid, messages)):
            self.pending[mid] = Pending(client, rnd, now)

    def poll(self, until: float) -> list[Upload]:
        """Replies pulled by `until`: returns as soon as a pull brings any (pulls every POLL s)."""
        while True:
            replies = {r.metadata.reply_to_message_id: r for r in self.grid.pull_messages(list(self.pending))}
            replies = {mid: r for mid, r in replies.items() if mid in self.pending}
            if replies or time.monotonic() >= until:
                break
            time.sleep(max(0.0, min(POLL, until - time.monotonic())))
        uploads = []
        for mid, reply in replies.items():
            p = self.pending.pop(mid)
            if reply.has_error():
                gone = reply.error.code == ErrorCode.NODE_UNAVAILABLE
                uploads.append(Upload(p.client, p.origin, None, error=reply.error.reason, gone=gone))
            else:
                uploads.append(Upload(p.client, p.origin, wire.reply_of(reply.content)))
        return uploads

    def abandon(self, client: int) -> None:
        self.pending = {mid: p for mid, p in self.pending.items() if p.client != client}

    def evaluate(self, rnd: int, blobs: dict[int, bytes]) -> dict[int, dict | None]:
        """Evaluate messages (runtime/client_eval.py): each owner's sums and counts, None where it
        failed or did not answer within runtime.round_timeout."""
        messages = [wire.evaluate_message(self.nodes[c], rnd, c, blob) for c, blob in blobs.items()]
        out: dict[int, dict | None] = {}
        for (client, _), (_, reply) in zip(blobs.items(), exchange(self.grid, messages, self.rt.round_timeout)):
            if reply is None or reply.has_error():
                why = "no answer" if reply is None else reply.error.reason
                self.log(f"round {rnd}: client {client} did not evaluate ({why})")
                out[client] = None
            else:
                out[client] = wire.eval_sums(reply.content)
        return out

    def wire_fields(self) -> dict[str, int]:
        """The serialized bytes of every Flower message sent and received since the last call (the
        round's record; round 1's also holds the partition queries and the base model's evaluation)."""
        return self.grid.take()

    # ---- checkpoints (the server part only) ------------------------------------------------------
    def state_dict(self) -> tuple[Tensors, dict]:
        return {}, {"runtime": "flower", "in_flight": len(self.pending)}

    def committed(self) -> None: ...

    def load_state_dict(self, state: Tensors, meta: dict) -> None:
        if meta.get("in_flight"):
            self.log("resuming on Flower: updates that were in flight when the server stopped are not awaited")
        if any(k.startswith("client/") for k in state):
            self.log(
                "resuming on Flower: the checkpoint's client state (error-feedback memory) stays behind; "
                "clients start from empty state"
            )


def push(grid: Grid | wire.MeteredGrid, messages: list[Message]) -> list[str]:
    """Sends `messages`; returns their ids (Flower's grids stamp each message as they push it)."""
    returned = [str(i) for i in grid.push_messages(messages)]
    ids = [m.metadata.message_id for m in messages]
    return ids if all(ids) else returned


def collect(
    grid: Grid | wire.MeteredGrid, ids: set[str], timeout: float, enough=None, poll: float = 0.5
) -> dict[str, Message]:
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


def exchange(grid: Grid | wire.MeteredGrid, messages: list[Message], timeout: float, poll: float = 0.5):
    """Sends `messages` and pairs each with its reply (None if none came within `timeout` seconds)."""
    ids = push(grid, messages)
    replies = collect(grid, set(ids), timeout, poll=poll)
    return [(m, replies.get(i)) for m, i in zip(messages, ids)]


def serve(grid: Grid, cfg, out: Path, resume: bool = False, log=print, rebuild_rounds: bool = False) -> dict:
    """Runs (or resumes) a whole fedsqueeze run over `grid` into `out` (prepared by the caller);
    returns the summary. The launch sequence is every runtime's (registry.execute)."""
    from ..launch import Launch, execute

    log(f"round timeout {cfg.runtime.round_timeout} s; each client resolves train.device on its own machine")
    launch = Launch(resume=resume, log=log, progress=LogProgress(log), rebuild_rounds=rebuild_rounds)
    transport = lambda session, _: GridTransport(session, grid, log)  # noqa: E731
    summary = execute(transport, cfg, out, launch, prepared=True, data=server_data(cfg))  # per-owner: names only
    assert summary is not None  # no `until` on Flower
    return summary
