"""What travels in a Flower message, and how client state sits in `context.state`.

A codec blob crosses as ONE uint8 array: Flower ships arrays as np.save bytes in content-addressed
chunks, one request per object, so one array per message keeps the framing small and fixed.
The ledger counts len(blob), the bytes the other side decodes, whatever Flower adds around them.
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


def pack(blob: bytes) -> ArrayRecord:
    return ArrayRecord({BLOB: Array(np.frombuffer(blob, dtype=np.uint8))})


def unpack(content: RecordDict, key: str) -> bytes | None:
    """The blob under `key`, or None when the sender had nothing to send this round."""
    if key not in content.array_records:
        return None
    return content.array_records[key][BLOB].numpy().tobytes()


def train_message(
    node_id: int, rnd: int, client: int, down_blob: bytes | None, train_seconds: float | None = None
) -> Message:
    info: dict[str, Any] = {"round": rnd, "partition-id": client}
    if train_seconds is not None:
        info[TRAIN_SECONDS] = float(train_seconds)
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
    train loss left out; `Reply.fields`)."""
    content = RecordDict(
        {
            INFO: ConfigRecord({"partition-id": client}),
            METRICS: MetricRecord({k: _number(v) for k, v in reply.fields().items() if k != "delay_s"}),
        }
    )
    if reply.blob is not None:
        content["up"] = pack(reply.blob)
    return Message(content=content, reply_to=msg)


def reply_of(content: RecordDict) -> Reply:
    """The Reply a train message's answer carries, its fields as they came: a remote client may send
    anything (a ConfigRecord of strings, missing keys); ServerRole.receive checks them."""
    record = content.get(METRICS)
    values = dict(record) if isinstance(record, MetricRecord | ConfigRecord) else {}
    return Reply.of_fields(unpack(content, "up"), values)


def eval_sums(content: RecordDict) -> dict:
    """An evaluate reply's sums and counts, as they came (client_eval.sums_problem checks them)."""
    record = content.get(METRICS)
    return dict(record) if isinstance(record, MetricRecord | ConfigRecord) else {}


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
