"""What travels in a Flower message, and how client state sits in `context.state`.

A codec blob crosses as ONE uint8 array: Flower ships arrays as np.save bytes in content-addressed
chunks, one request per object, so one array per message keeps the framing small and fixed.
The ledger counts len(blob), the bytes the other side decodes, whatever Flower adds around them;
beside it a Flower run also records `wire_down` / `wire_up`: what every message the ServerApp sent and
received costs on the nodes' links, its serialized bytes and its Fleet calls' HTTP heads (`fleet_bytes`,
counted by `MeteredGrid`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from ..reply import Reply  # plain data, no torch

if TYPE_CHECKING:  # torch loads only where tensors are made: the resident shim never imports it
    from ...tensors import Tensors

# Message types: "query" asks a node which partition it holds; "train" runs one client round;
# "evaluate" has an owner judge the global adapter on its own held-out split (runtime/client_eval.py).
QUERY, TRAIN, EVALUATE = "query", "train", "evaluate"
BLOB, INFO, METRICS = "blob", "info", "metrics"
STATE = "fedsqueeze"  # key of the client's state in context.state
TRAIN_SECONDS = "train-seconds"  # partial work: the wall-clock the client may train for
JUDGE = "judge"  # a train message's flag: score the received adapter first (eval.ride)
EVAL_SUMS = "eval"  # a train reply's record of those scores (Reply.eval)


def pack(blob: bytes) -> ArrayRecord:
    return ArrayRecord({BLOB: Array(np.frombuffer(blob, dtype=np.uint8))})


def unpack(content: RecordDict, key: str) -> bytes | None:
    """The blob under `key`, or None when the sender had nothing to send this round."""
    if key not in content.array_records:
        return None
    return content.array_records[key][BLOB].numpy().tobytes()


def train_message(
    node_id: int,
    rnd: int,
    client: int,
    down_blob: bytes | None,
    train_seconds: float | None = None,
    judge: bool = False,
) -> Message:
    info: dict[str, Any] = {"round": rnd, "partition-id": client}
    if train_seconds is not None:
        info[TRAIN_SECONDS] = float(train_seconds)
    if judge:
        info[JUDGE] = True
    content = RecordDict({INFO: ConfigRecord(info)})
    if down_blob is not None:
        content["down"] = pack(down_blob)
    return Message(content=content, dst_node_id=node_id, message_type=TRAIN)


def evaluate_message(node_id: int, rnd: int, client: int, blob: bytes) -> Message:
    content = RecordDict({INFO: ConfigRecord({"round": rnd, "partition-id": client}), "down": pack(blob)})
    return Message(content=content, dst_node_id=node_id, message_type=EVALUATE)


def evaluate_reply(msg: Message, client: int, sums: dict) -> Message:
    """Sums and counts, plus Flower's `num-examples` (the held-out examples judged)."""
    record = MetricRecord({**{k: _number(v) for k, v in sums.items()}, "num-examples": int(sums["eval_examples"])})
    content = RecordDict({INFO: ConfigRecord({"partition-id": client}), METRICS: record})
    return Message(content=content, reply_to=msg)


def train_reply(msg: Message, client: int, reply: Reply) -> Message:
    """The reply's Flower form: its blob as "up", its other fields as a MetricRecord (a withheld
    train loss left out; `Reply.fields`), the scores it was asked for (`Reply.eval`) as their own."""
    plain = {k: v for k, v in reply.fields().items() if k not in ("delay_s", EVAL_SUMS)}
    metrics = MetricRecord({k: _number(v) for k, v in plain.items()})
    content = RecordDict({INFO: ConfigRecord({"partition-id": client}), METRICS: metrics})
    if reply.eval is not None:
        content[EVAL_SUMS] = MetricRecord({k: _number(v) for k, v in reply.eval.items()})
    if reply.blob is not None:
        content["up"] = pack(reply.blob)
    return Message(content=content, reply_to=msg)


def reply_of(content: RecordDict) -> Reply:
    """The Reply a train message's answer carries, its fields as they came: a remote client may send
    anything (a ConfigRecord of strings, missing keys); ServerRole.receive checks them."""
    record, judged = content.get(METRICS), content.get(EVAL_SUMS)
    values: dict[str, Any] = dict(record) if isinstance(record, MetricRecord | ConfigRecord) else {}
    values.pop(EVAL_SUMS, None)  # only from its own record
    if isinstance(judged, MetricRecord | ConfigRecord):
        values[EVAL_SUMS] = dict(judged)
    return Reply.of_fields(unpack(content, "up"), values)


def eval_sums(content: RecordDict) -> dict:
    """An evaluate reply's sums and counts, as they came (client_eval.sums_problem checks them)."""
    record = content.get(METRICS)
    return dict(record) if isinstance(record, MetricRecord | ConfigRecord) else {}


# Flower 1.41's Fleet API is protobuf over HTTP/1.1 (flower-supernode's default): every call adds an HTTP
# head each way, whatever it carries. Measured with benchmarks/wire_proxy.py on loopback (per call, on
# the node's link): a response head is about 130 B (status line, date, server, content-length,
# content-type); a request head about 850 B (the SuperNode's signature headers), a pull-object or confirm
# request with its body (node, run id, 64-hex object id) about 935 B. Idle polls and heartbeats are
# left out: they follow time, not messages.
HEAD_DOWN, HEAD_UP, ASK_UP, OBJECT_ID = 130, 850, 935, 66


def message_bytes(msg: Message) -> int:
    """The bytes of `msg` in Flower's serialized form (flwr's serde to protobuf), as the Fleet API
    carries it between the SuperLink and a node: its metadata and object tree (in PullMessages /
    PushMessages) and each object of its content, deflated (one PullObject / PushObject each): the
    blob with its array header, the records around it and the 64-hex object ids that name them."""
    from flwr.app.message import remove_content_from_message
    from flwr.common.serde import message_to_proto
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree

    head = remove_content_from_message(msg) if msg.has_content() else msg
    size = message_to_proto(head).ByteSize() + get_object_tree(msg).ByteSize()
    return size + sum(len(obj.deflate()) for obj in get_all_nested_objects(msg).values())


def fleet_bytes(msg: Message, to_node: bool) -> tuple[int, int]:
    """(down, up): what moving `msg` costs on a node's link, by the Fleet calls it takes. A message to
    a node: one PullMessages, one PullObject per object, one ConfirmMessageReceived; its serialized
    bytes down. A node's reply: one PushMessages (answered with the ids of the objects to push) and
    one PushObject per object; its serialized bytes up. Each call's HTTP heads as measured (above)."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    size, objects = message_bytes(msg), len(get_all_nested_objects(msg))
    if to_node:
        calls = objects + 2
        return size + calls * HEAD_DOWN, calls * ASK_UP
    calls = objects + 1
    return calls * HEAD_DOWN + objects * OBJECT_ID, size + calls * HEAD_UP


class MeteredGrid:
    """A Grid that counts what every message pushed (to the nodes) and pulled (their replies) costs on
    the nodes' links (`fleet_bytes`), until `take` hands the counts over (a round's record)."""

    def __init__(self, grid):
        self.grid = grid
        self.down = self.up = 0

    def _count(self, messages, to_node: bool) -> None:
        for msg in messages:
            down, up = fleet_bytes(msg, to_node)
            self.down, self.up = self.down + down, self.up + up

    def push_messages(self, messages):
        messages = list(messages)
        ids = list(self.grid.push_messages(messages))  # the grid stamps each message's id first
        self._count(messages, True)
        return ids

    def pull_messages(self, message_ids):
        replies = list(self.grid.pull_messages(message_ids))
        self._count(replies, False)
        return replies

    def take(self) -> dict[str, int]:
        out, self.down, self.up = {"wire_down": self.down, "wire_up": self.up}, 0, 0
        return out

    def __getattr__(self, name):
        return getattr(self.grid, name)


def _number(value) -> int | float:
    """Ints stay ints (byte counts, example counts), so rounds.jsonl reads the same as in-process."""
    return int(value) if isinstance(value, int) else float(value)


# ---- client state in context.state (safetensors bytes keep every dtype exactly) ---------------
def save_state(state: RecordDict, tensors: Tensors) -> None:
    put_state_bytes(state, state_to_bytes(tensors))


def load_state(state: RecordDict) -> Tensors:
    return state_from_bytes(state_bytes(state))


def state_bytes(state: RecordDict) -> bytes:
    """The client's state as the bytes it is kept in (b"": none yet); no torch needed."""
    if STATE not in state.array_records:
        return b""
    return state.array_records[STATE][BLOB].numpy().tobytes()


def put_state_bytes(state: RecordDict, data: bytes) -> None:
    state[STATE] = ArrayRecord({BLOB: Array(np.frombuffer(data, dtype=np.uint8))})


def state_to_bytes(tensors: Tensors) -> bytes:
    from safetensors.torch import save as st_save

    return st_save({k: v.contiguous() for k, v in tensors.items()}) if tensors else b""


def state_from_bytes(data: bytes) -> Tensors:
    from safetensors.torch import load as st_load

    return dict(st_load(data)) if data else {}
