"""Issue 26, Must show 2: a method, a codec stage and an upload filter defined in this file alone,
each registered with one line, run in-process and over Flower's messages (the real ServerApp and
ClientApp through test_flower's in-process Grid), with the same bytes and the same adapter."""

from __future__ import annotations

import json

import numpy as np

from fedsqueeze import config as config_mod
from fedsqueeze.codecs.base import CODECS, Values
from fedsqueeze.codecs.wire import Message, Reader, Writer
from fedsqueeze.runtime import RUNTIMES, Launch
from fedsqueeze.runtime.filters import UPLOAD_FILTERS, ClientRound, UploadFilter
from fedsqueeze.strategies import METHODS, ClientUpdate
from fedsqueeze.strategies.base import Method
from fedsqueeze.strategies.mixins import MeanOfDeltas
from test_flower import _assert_same_run, _rounds, _serve_in_process

from conftest import tiny_config


class HalfStep(MeanOfDeltas, Method):
    """FedAvg with a server learning rate of 0.5."""

    name = "test-half-step"

    def aggregate(self, rnd: int, updates: list[ClientUpdate]) -> dict:
        weights = self.weights(updates)
        for k in updates[0].tensors if updates else ():
            self.adapter[k] = self.adapter[k] + 0.5 * sum(w * u.tensors[k] for w, u in zip(weights, updates))
        return {"server_lr": 0.5}


class Fixed16(Values):
    """Values as 16-bit fixed point (steps of 2**-14, clipped at +-2): lossy, half of fp32's bytes."""

    name = "test_fixed16"
    value_bits = 16
    STEP = 2.0**-14

    def encode(self, values: np.ndarray, lengths: np.ndarray, w: Writer, reconstruct: bool):
        codes = np.clip(np.round(values / self.STEP), -32767, 32767).astype("<i2")
        w.array(codes)
        return codes.astype(np.float32) * self.STEP if reconstruct else None

    def decode(self, r: Reader, lengths: np.ndarray) -> np.ndarray:
        return r.array("<i2", int(lengths.sum()), "fixed16 values").astype(np.float32) * self.STEP


class SilentClient(UploadFilter):
    """Client 1 trains but sends nothing (its method state moves on as usual)."""

    def upload(self, up: ClientRound, message: Message | None) -> Message | None:
        return None if up.client == 1 else message


METHODS.register("test-half-step")(HalfStep)
CODECS.register("test_fixed16")(Fixed16)
UPLOAD_FILTERS.register("test-silent")(lambda s, c: SilentClient() if s.cfg.method == "test-half-step" else None)


def test_a_method_a_codec_stage_and_a_filter_from_a_test_file_run_in_process_and_over_flower(tmp_path, corpus):
    overrides = {
        "method": '"test-half-step"',
        "uplink.codec": '"test_fixed16"',
        "data.clients": "3",
        "data.partition": '"iid"',
    }
    cfg_path = tiny_config(tmp_path, corpus, **overrides)
    cfg = config_mod.load(cfg_path)
    local = RUNTIMES.get("local")(cfg, tmp_path / "local", Launch(log=lambda *_: None))
    rows = _rounds(tmp_path / "local")
    assert local["uplink_codec"] == "test_fixed16" and [r["clients"] for r in rows] == [[0, 2], [0, 2]]
    assert all(r["server_lr"] == 0.5 for r in rows)
    assert all(r["per_client"].get("1", {}).get("up", 0) == 0 for r in rows)  # the filter: client 1 is silent
    assert all(0.45 < r["codec_up"]["ratio"] < 0.55 and r["codec_up"]["rel_error"] > 0 for r in rows)
    _serve_in_process(cfg_path, tmp_path / "grid")
    _assert_same_run(tmp_path / "local", tmp_path / "grid", exact=True)
    summary = json.loads((tmp_path / "grid" / "summary.json").read_text())
    assert summary["method"] == "test-half-step" and summary["bytes_up"] == local["bytes_up"]
