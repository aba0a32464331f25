"""Issue 26, Must show 2: a method, a codec stage and an upload filter defined in this file alone,
each registered with one line, run in-process, over Flower's messages (the real ServerApp and
ClientApp through test_flower's in-process Grid) and on Flower's simulation engine, with the same
bytes and the same adapter.

The simulation's ClientApps run in Ray's processes, which never imported this file: the
simulation hands them this process's registrations beyond the catalog as lazy "module:attribute"
entries and the folder this module lives in (registry.Extensions), so they import it on first use.
That is why the module's top level is light (the test helpers are imported inside the tests) and
the filter's factory is a named function (a lambda has no name to import it by)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedsqueeze import config as config_mod
from fedsqueeze.codecs.base import CODECS, Values
from fedsqueeze.codecs.wire import Message, Reader, Writer
from fedsqueeze.runtime import RUNTIMES, Launch
from fedsqueeze.runtime.filters import UPLOAD_FILTERS, ClientRound, UploadFilter
from fedsqueeze.strategies import METHODS, ClientUpdate
from fedsqueeze.strategies.base import Method
from fedsqueeze.strategies.mixins import MeanOfDeltas


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


def silent_of(session, client: int) -> SilentClient | None:
    return SilentClient() if session.cfg.method == "test-half-step" else None


METHODS.register("test-half-step")(HalfStep)
CODECS.register("test_fixed16")(Fixed16)
UPLOAD_FILTERS.register("test-silent")(silent_of)


def _local_run(tmp_path, corpus):
    """The config path and the in-process run of the three extensions, checked."""
    from test_flower import _rounds

    from conftest import tiny_config

    overrides = {
        "method": '"test-half-step"',
        "uplink.codec": '"test_fixed16"',
        "data.clients": "3",
        "data.partition": '"iid"',
    }
    cfg_path = tiny_config(tmp_path, corpus, **overrides)
    local = RUNTIMES.get("local")(config_mod.load(cfg_path), tmp_path / "local", Launch(log=lambda *_: None))
    rows = _rounds(tmp_path / "local")
    assert local["uplink_codec"] == "test_fixed16" and [r["clients"] for r in rows] == [[0, 2], [0, 2]]
    assert all(r["server_lr"] == 0.5 for r in rows)
    assert all(r["per_client"].get("1", {}).get("up", 0) == 0 for r in rows)  # the filter: client 1 is silent
    assert all(0.45 < r["codec_up"]["ratio"] < 0.55 and r["codec_up"]["rel_error"] > 0 for r in rows)
    return cfg_path, local


def test_a_method_a_codec_stage_and_a_filter_from_a_test_file_run_in_process_and_over_flower(tmp_path, corpus):
    from test_flower import _assert_same_run, _serve_in_process

    cfg_path, local = _local_run(tmp_path, corpus)
    _serve_in_process(cfg_path, tmp_path / "grid")
    _assert_same_run(tmp_path / "local", tmp_path / "grid", exact=True)
    summary = json.loads((tmp_path / "grid" / "summary.json").read_text())
    assert summary["method"] == "test-half-step" and summary["bytes_up"] == local["bytes_up"]


@pytest.mark.integration  # Ray's start: about 40 s on a 2-core CPU
def test_the_same_extensions_run_on_flower_simulation_engine(tmp_path, corpus):
    """runtime.kind = "flower-sim": the ClientApps run in Ray's processes, which learn the
    extensions from registry.Extensions; same bytes, same adapter (exact: one thread each)."""
    from test_flower import _assert_same_run

    cfg_path, local = _local_run(tmp_path, corpus)
    cfg = config_mod.load(cfg_path, ['runtime.kind="flower-sim"'])
    sim = RUNTIMES.get("flower-sim")(cfg, tmp_path / "sim", Launch(log=lambda *_: None))
    _assert_same_run(tmp_path / "local", tmp_path / "sim", exact=True)
    assert sim["method"] == "test-half-step" and sim["bytes_up"] == local["bytes_up"]


def test_the_extensions_reach_a_process_that_never_imported_this_file(tmp_path):
    """What the simulation hands its ClientApps, without Ray: a fresh interpreter that installs this
    process's Extensions knows the three names, imports this module on first use (which registers
    the same objects again, accepted), and runs the filter after the catalog's."""
    import os
    import pickle
    import subprocess
    import sys
    from pathlib import Path

    import fedsqueeze
    from fedsqueeze.registry import extensions

    ext = extensions()
    assert {("method", "test-half-step"), ("codec", "test_fixed16"), ("upload filter", "test-silent")} <= {
        (kind, name) for kind, name, _, _ in ext.entries
    }
    assert str(Path(__file__).resolve().parent) in ext.paths
    (tmp_path / "ext.pkl").write_bytes(pickle.dumps(ext))
    code = (
        "import pickle, sys\n"
        "from fedsqueeze.registry import CODECS, METHODS, UPLOAD_FILTERS\n"
        "assert 'test-half-step' not in METHODS and 'test_extensions' not in sys.modules\n"
        "pickle.loads(open(sys.argv[1], 'rb').read()).install()\n"
        "assert [n for n, _ in UPLOAD_FILTERS.in_order()][-1] == 'test-silent'\n"
        "assert 'test_extensions' in sys.modules\n"
        "assert METHODS.get('test-half-step').__name__ == 'HalfStep'\n"
        "assert CODECS.get('test_fixed16').name == 'test_fixed16'\n"
    )
    src = str(Path(fedsqueeze.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src}
    res = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "ext.pkl")], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
