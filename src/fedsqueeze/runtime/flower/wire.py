"""What travels in a Flower message, and how client state sits in `context.state`.

A codec blob crosses as ONE uint8 array: Flower ships arrays as np.save bytes in content-addressed
chunks, one request per object, so one array per message keeps the framing small and fixed.
The ledger counts len(blob), the bytes the other side decodes, whatever Flower adds around them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ...tensors import Tensors
from ..reply import Reply

# Message types: "query" asks a node which partition it holds; "train" runs one client round.
QUERY, TRAIN = "query", "train"
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


def _number(value) -> int | float:
    """Ints stay ints (byte counts, example counts), so rounds.jsonl reads the same as in-process."""
    return int(value) if isinstance(value, int) else float(value)


# ---- client state in context.state (safetensors bytes keep every dtype exactly) ---------------
def save_state(state: RecordDict, tensors: Tensors) -> None:
    data = st_save({k: v.contiguous() for k, v in tensors.items()}) if tensors else b""
    state[STATE] = ArrayRecord({BLOB: Array(np.frombuffer(data, dtype=np.uint8))})


def load_state(state: RecordDict) -> Tensors:
    if STATE not in state.array_records:
        return {}
    data = state.array_records[STATE][BLOB].numpy().tobytes()
    return dict(st_load(data)) if data else {}
