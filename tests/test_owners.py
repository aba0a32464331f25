"""Every data owner keeps its data (issue 28): per-owner sources, owners' nodes that read only their
own file, a coordinator that reads none, evaluation on the owners' side, claimed counts capped."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from fedsqueeze import config as config_mod
from fedsqueeze.data.owners import build_owner_federation, owner_view
from fedsqueeze.errors import ConfigError
from fedsqueeze.runtime import LocalRuntime, Session, rundir
from fedsqueeze.runtime.claims import cap_weights
from fedsqueeze.runtime.client_eval import combine

from conftest import tiny_config


def write_owners(folder: Path, corpus: Path) -> Path:
    """Three owners in three formats with their own field names: alice.jsonl, bob.csv, carol.json."""
    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["domain"], []).append(r)
    a, b, c = sorted(by)[:3]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "alice.jsonl", "w") as f:
        for r in by[a]:
            f.write(json.dumps(r) + "\n")
    with open(folder / "bob.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["instruction", "response", "domain"])
        w.writeheader()
        for r in by[b][:30]:
            w.writerow({k: r[k] for k in ("instruction", "response", "domain")})
    (folder / "carol.json").write_text(json.dumps(by[c][:36]))
    return folder


@pytest.fixture
def owners(tmp_path, corpus) -> Path:
    return write_owners(tmp_path / "owners", corpus)


def owners_config(tmp_path: Path, corpus: Path, folder: Path, **overrides) -> Path:
    body = {"data.source": f'"owners:{folder}"', "data.clients": "3", "train.rounds": "2", **overrides}
    return tiny_config(tmp_path, corpus, **body)


def local_run(cfg_path: Path, out: Path, sets=()) -> tuple[dict, list[str]]:
    cfg = config_mod.load(cfg_path, list(sets))
    rundir.prepare(out, cfg, overwrite=True)
    lines: list[str] = []

    class Log:
        def __getattr__(self, name):
            return (lambda text: lines.append(text)) if name == "log" else (lambda *a, **k: None)

    return LocalRuntime(Session.build(cfg, log=lambda *_: None), out, Log()).run(), lines


def rounds(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]


# ---- per-owner sources ---------------------------------------------------------------------------
def test_owners_are_the_files_sorted_by_stem_and_clients_follow(tmp_path, corpus, owners):
    path = tmp_path / "o.toml"
    path.write_text(f'[data]\nsource = "owners:{owners}"\n')
    cfg = config_mod.load(path)
    assert cfg.data.owners == ["alice", "bob", "carol"] and cfg.data.clients == 3
    with pytest.raises(ConfigError, match="data.clients.*3 owners"):
        config_mod.load(path, ["data.clients=4"])


def test_an_owners_split_comes_from_its_own_file_alone(tmp_path, corpus, owners):
    cfg = config_mod.load(owners_config(tmp_path, corpus, owners))
    tok = Session.build(cfg, log=lambda *_: None).tokenizer
    whole = build_owner_federation(cfg.data, tok, cfg.seed)
    assert [c.name for c in whole.clients] == ["alice", "bob", "carol"]
    # Another folder with one more owner, and each owner's file alone in a folder of its own.
    shutil.copy(owners / "bob.csv", owners / "aaron.csv")
    bigger = build_owner_federation(cfg.data.model_copy(update={"clients": 4, "owners": None}), tok, cfg.seed)
    for i, name in enumerate(["alice", "bob", "carol"]):
        own = tmp_path / name
        own.mkdir()
        file = shutil.copy(next(owners.glob(f"{name}.*")), own)
        view, index = owner_view(cfg.data, tok, cfg.seed, Path(file), ["alice", "bob", "carol"])
        assert index == i
        for other in (view.clients[i], bigger.clients[i + 1]):
            assert other.eval.input_ids == whole.clients[i].eval.input_ids
            assert other.train.input_ids == whole.clients[i].train.input_ids


# ---- claims capped (Must show 4) -----------------------------------------------------------------
def test_cap_weights_caps_the_largest_claims_and_keeps_honest_ones_exact():
    assert cap_weights({0: 10, 1: 20, 2: 30}, 0.5) == ({0: 10, 1: 20, 2: 30}, {})
    weights, capped = cap_weights({0: 10, 1: 10**9, 2: 30}, 0.5)
    assert capped == {1: 10**9} and weights[1] / sum(weights.values()) == pytest.approx(0.5)
    weights, capped = cap_weights({0: 10, 1: 10**9, 2: 10**9, 3: 5}, 0.3)
    assert max(w / sum(weights.values()) for w in weights.values()) <= 0.3 + 1e-12
    assert set(capped) == {1, 2}


def test_an_inflated_claim_never_weighs_more_than_max_client_weight(tmp_path, corpus, owners):
    cfg = owners_config(tmp_path, corpus, owners, **{"faults.kind": '"inflate-examples"', "faults.clients": "[1]"})
    _, lines = local_run(cfg, tmp_path / "run")
    loaded = config_mod.load(cfg)
    fed = build_owner_federation(loaded.data, Session.build(loaded, log=lambda *_: None).tokenizer, loaded.seed)
    others = fed.clients[0].num_examples + fed.clients[2].num_examples  # alice's and carol's claims
    for r in rounds(tmp_path / "run"):
        counted = r["capped"]["1"]["counted"]
        assert r["capped"]["1"]["claimed"] == 10**9
        assert counted / (counted + others) == pytest.approx(0.5)  # server.max_client_weight
    assert any("weights capped: client 1 claimed 1e+09" in line and "max_client_weight" in line for line in lines)


# ---- evaluation at the clients -------------------------------------------------------------------
def test_the_weighted_mean_is_the_pooled_figure_by_hand():
    replies = {
        "a": {"eval_loss_sum": 10.0, "eval_tokens": 5, "eval_examples": 2, "acc_sum": 1.0, "choice_n": 2},
        "b": {"eval_loss_sum": 3.0, "eval_tokens": 1, "eval_examples": 1, "acc_sum": 1.0, "choice_n": 1},
    }
    fields = combine(replies)
    assert fields["eval_loss"] == pytest.approx(13 / 6)
    assert fields["eval"] == {"a": 2.0, "b": 3.0}
    assert fields["eval_means"]["acc"] == pytest.approx(2 / 3)
    capped = combine({**replies, "b": {**replies["b"], "eval_tokens": 1000, "eval_loss_sum": 3000.0}}, 0.5)
    assert capped["eval_loss"] == pytest.approx(0.5 * 2.0 + 0.5 * 3.0) and "b" in capped["eval_capped"]


def test_client_evaluation_equals_the_pooled_server_evaluation(tmp_path, corpus, owners):
    cfg = owners_config(
        tmp_path, corpus, owners, **{"eval.at": '"both"', "eval.pooled": "true", "server.max_client_weight": "1.0"}
    )
    local_run(cfg, tmp_path / "run")
    rows = rounds(tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for r in rows:
        assert r["client_eval"]["eval_loss"] == pytest.approx(r["eval_loss"], rel=1e-6)
        assert set(r["client_eval"]["eval"]) == {"alice", "bob", "carol"}
    assert summary["base_eval_loss"] == pytest.approx(summary["base_eval_loss"])


def test_evaluate_messages_are_billed_as_downlink(tmp_path, corpus, owners):
    # An out-of-domain set: the coordinator judges it under eval.at = clients too, no bytes for it.
    more = {"data.ood_source": f'"jsonl:{corpus}"', "eval.ride": "false"}  # every evaluation by message
    cfg = owners_config(tmp_path, corpus, owners, **more)
    local_run(cfg, tmp_path / "at-clients")
    local_run(cfg, tmp_path / "at-server", ["eval.at=server"])
    clients, server = rounds(tmp_path / "at-clients"), rounds(tmp_path / "at-server")
    for name in ("base_ood_eval_loss", "ood_eval_loss"):
        figures = [json.loads((tmp_path / d / "summary.json").read_text())[name] for d in ("at-clients", "at-server")]
        assert figures[0] == figures[1]
    for rnd, (a, b) in enumerate(zip(clients, server), 1):
        assert a["ood_eval_loss"] == b["ood_eval_loss"]
        assert a["bytes_up"] == b["bytes_up"]
        assert a["eval_at"] == "clients" and set(a["eval"]) == {"alice", "bob", "carol"}
        sent = sum(a["eval_down"].values())
        assert a["bytes_down"] == b["bytes_down"] + sent
        blobs = 2 if rnd == 1 else 1  # round 1 also carries the base model's evaluation
        assert set(a["eval_down"].values()) == {blobs * a["per_client"]["0"]["up"]}  # fp32: the adapter's size
        for c in ("0", "1", "2"):
            assert a["per_client"][c]["down"] == b["per_client"][c]["down"] + a["eval_down"][c]


# ---- a classify task held by its owners -------------------------------------------------------------
def write_review_owners(folder: Path) -> Path:
    """Three owners' CSVs with columns review / stars; carol holds only 5-star reviews (alone she has
    one label: the run's label set comes from every owner's file)."""
    from test_classify import write_reviews

    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(("alice", "bob")):
        write_reviews(folder / f"{name}.csv", n=40, seed=i)
    rows = list(csv.reader(open(write_reviews(folder / "all.csv", n=120, seed=2), newline="")))
    (folder / "all.csv").unlink()
    with open(folder / "carol.csv", "w", newline="") as f:
        csv.writer(f).writerows([rows[0]] + [r for r in rows[1:] if r[2] == "5"][:30])
    return folder


def test_a_classify_task_judged_at_the_owners_equals_the_pooled_server_figures(tmp_path, corpus):
    from fedsqueeze.scoring.classify import dense

    folder = write_review_owners(tmp_path / "reviews")
    keys = {"data.task": '"classify"', "data.text_field": '"review"', "data.label_field": '"stars"'}
    cfg = owners_config(tmp_path, corpus, folder, **keys)
    assert config_mod.load(cfg).data.labels == ["1", "3", "5"]  # every owner's labels, sorted as numbers
    local_run(cfg, tmp_path / "clients")
    local_run(cfg, tmp_path / "server", ["eval.at=server"])
    summary, _ = serve_owners(cfg, tmp_path / "grid", private_copies(tmp_path, folder))  # nodes: own file only
    a, b, g = rounds(tmp_path / "clients"), rounds(tmp_path / "server"), rounds(tmp_path / "grid")
    for x, y, z in zip(a, b, g, strict=True):
        assert x["eval_at"] == "clients" and x["eval_classify"]["labels"] == ["1", "3", "5"]
        assert x["eval_classify"] == y["eval_classify"] == z["eval_classify"]
        assert x["eval_means"] == y["eval_means"] == z["eval_means"]  # acc, acc_se, macro_f1, chance, ...
        assert x["eval_metrics"] == y["eval_metrics"] == z["eval_metrics"]  # each owner's own figures
        # By hand: the matrix is the sum of the owners' matrices, acc its diagonal over its total.
        total = [
            [sum(dense(x["eval_metrics"][n]["confusion"], 3)[t][p] for n in x["eval"]) for p in range(3)]
            for t in range(3)
        ]
        assert x["eval_classify"]["confusion"] == total
        n = sum(map(sum, total))
        assert x["eval_means"]["classify_n"] == n == sum(x["eval_examples"].values())
        assert x["eval_means"]["acc"] == sum(total[k][k] for k in range(3)) / n
        for key in ("bytes_up", "per_client", "eval_down"):
            assert x.get(key) == z.get(key), key
        assert x.get("eval_on_train") == z.get("eval_on_train")  # rode on the train messages over Flower too
    assert summary["eval_classify"] == json.loads((tmp_path / "clients" / "summary.json").read_text())["eval_classify"]


def test_a_classify_label_set_must_reach_every_process(tmp_path, corpus):
    folder = write_review_owners(tmp_path / "reviews")
    keys = {"data.task": '"classify"', "data.text_field": '"review"', "data.label_field": '"stars"'}
    cfg = config_mod.load(owners_config(tmp_path, corpus, folder, **keys))
    unknown = cfg.data.model_copy(update={"labels": None})  # a config loaded away from the folder
    with pytest.raises(ConfigError, match="data.labels.*not readable here"):
        owner_view(unknown, None, 0, folder / "carol.csv", ["alice", "bob", "carol"])
    with pytest.raises(ConfigError, match=r"owner 'alice'.*no column 'score'.*data.label_field"):
        config_mod.load(owners_config(tmp_path, corpus, folder, **{**keys, "data.label_field": '"score"'}))


def test_confusion_counts_are_checked_summed_and_capped():
    from fedsqueeze.runtime.client_eval import sums_problem

    base = {"eval_loss_sum": 2.0, "eval_tokens": 2, "eval_examples": 2}
    a = {**base, "classify_n": 2, "confusion_0_0": 1, "confusion_1_0": 1}
    b = {**base, "classify_n": 4, "confusion_1_1": 3, "confusion_0_1": 1}
    assert sums_problem(a, 2) is None
    assert "not a count" in sums_problem({**a, "confusion_0_0": -1, "confusion_1_0": 3}, 2)
    assert "not a cell" in sums_problem({**a, "confusion_0_2": 0}, 2)
    assert "add up to 2" in sums_problem({**a, "classify_n": 5}, 2)
    fields = combine({"a": a, "b": b}, 1.0, ["x", "y"])
    assert fields["eval_classify"] == {"labels": ["x", "y"], "confusion": [[1, 1], [1, 3]]}
    assert fields["eval_means"]["acc"] == 4 / 6 and fields["eval_means"]["classify_n"] == 6
    assert fields["eval_metrics"]["a"]["acc"] == 0.5 and fields["eval_metrics"]["b"]["confusion"] == [
        [0, 1, 1],
        [1, 1, 3],
    ]
    inflated = combine({"a": a, "b": {**b, "classify_n": 400, "confusion_1_1": 399}}, 0.5, ["x", "y"])
    assert inflated["eval_means"]["classify_n"] == pytest.approx(4)  # b counted as much as a: half the total
    assert inflated["eval_classify"]["confusion"][1][1] == pytest.approx(2 * 399 / 400)  # scaled to weight 2
    assert inflated["eval_capped"]["b"]["claimed"] == 400


# ---- over Flower: nodes with their own file only, a coordinator with none --------------------------
def private_copies(tmp_path: Path, folder: Path) -> dict[str, Path]:
    """Each owner's file alone in a folder of its own (what its node holds)."""
    out = {}
    for file in sorted(folder.iterdir()):
        home = tmp_path / "nodes" / file.stem
        home.mkdir(parents=True)
        out[file.stem] = Path(shutil.copy(file, home))
    return out


def serve_owners(cfg_path: Path, out: Path, files: dict[str, Path | None], sets=(), timeout: int = 5, lines=None):
    """The ServerApp over an in-process Grid whose nodes have only `data-path` in their node config,
    with a config whose data.source names a folder that does not exist (the coordinator has no data)."""
    from fedsqueeze.runtime.flower.client_app import make_client_app
    from fedsqueeze.runtime.flower.server import serve
    from test_flower import InProcessGrid

    cfg = config_mod.load(cfg_path, list(sets))  # beside the folder: data.owners filled in
    cfg = config_mod.validate(
        {
            **cfg.model_dump(exclude_none=True),
            "data": {**cfg.data.model_dump(exclude_none=True), "source": "owners:/nonexistent/owners"},
            "runtime": {**cfg.runtime.model_dump(), "connect_timeout": timeout, "round_timeout": 30},
        }
    )
    rundir.prepare(out, cfg, overwrite=True)
    grid = InProcessGrid(make_client_app(), len(files))
    for context, path in zip(sorted(grid.contexts.values(), key=lambda c: c.node_id), files.values()):
        context.node_config = {"data-path": str(path)} if path is not None else {}
        context.run_config = {"config-toml": cfg.to_toml()}
    lines = [] if lines is None else lines
    return serve(grid, cfg, out, log=lines.append), lines


def test_owners_over_flower_messages_equal_the_in_process_run(tmp_path, corpus, owners):
    # The out-of-domain file is on the coordinator's machine only (the nodes hold their own file).
    more = {"uplink.codec": '"fp16"', "uplink.error_feedback": "true", "data.ood_source": f'"jsonl:{corpus}"'}
    cfg = owners_config(tmp_path, corpus, owners, **more)
    local_run(cfg, tmp_path / "local")
    summary, _ = serve_owners(cfg, tmp_path / "grid", private_copies(tmp_path, owners))
    a, b = rounds(tmp_path / "local"), rounds(tmp_path / "grid")
    for x, y in zip(a, b):
        assert (x["clients"], x["bytes_up"], x["bytes_down"], x["per_client"], x.get("eval_down")) == (
            y["clients"],
            y["bytes_up"],
            y["bytes_down"],
            y["per_client"],
            y.get("eval_down"),
        )
        assert x["eval_loss"] == pytest.approx(y["eval_loss"], rel=1e-6)
        assert x["eval"] == pytest.approx(y["eval"], rel=1e-6) and x["eval_tokens"] == y["eval_tokens"]
        assert x["ood_eval_loss"] == pytest.approx(y["ood_eval_loss"], rel=1e-6)
    assert summary["base_eval_loss"] == pytest.approx(
        json.loads((tmp_path / "local" / "summary.json").read_text())["base_eval_loss"], rel=1e-6
    )


def test_a_node_without_its_data_path_is_refused_with_a_clear_message(tmp_path, corpus, owners):
    from fedsqueeze.errors import UserError

    cfg = owners_config(tmp_path, corpus, owners)
    lines: list[str] = []
    with pytest.raises(UserError, match="no SuperNode connected"):
        serve_owners(cfg, tmp_path / "grid", {"alice": None, "bob": None, "carol": None}, timeout=0, lines=lines)
    assert any("has no 'data-path'" in line and "--data FILE" in line for line in lines), lines


def test_the_coordinator_refuses_to_judge_data_it_does_not_hold(tmp_path, corpus, owners):
    cfg = owners_config(tmp_path, corpus, owners, **{"eval.at": '"server"'})
    with pytest.raises(ConfigError, match="eval.at"):
        serve_owners(cfg, tmp_path / "grid", private_copies(tmp_path, owners))


# ---- the same folder on Flower's simulation engine (Must show 2) ----------------------------------
@pytest.mark.integration
def test_flower_simulation_of_an_owners_folder_equals_in_process(tmp_path, corpus, owners, cli):
    """Also issue 31's "runs on flower-sim" for lora-xs (4-bit broadcast cores): one simulation for
    both, each start of Flower's engine costs seconds of Ray."""
    from test_flower import _assert_same_run

    cfg = owners_config(tmp_path, corpus, owners, method='"lora-xs"', **{"params.download_bits": "4"})
    local, sim = tmp_path / "local", tmp_path / "sim"
    assert cli("run", cfg, "--out", local).exit_code == 0
    res = cli("run", cfg, "--out", sim, "--set", 'runtime.kind="flower-sim"')
    assert res.exit_code == 0, res.output
    for x, y in zip(rounds(local), rounds(sim), strict=True):
        for key in ("clients", "bytes_up", "bytes_down", "per_client", "eval_down", "eval_tokens"):
            assert x[key] == y[key], key
        assert x["eval_loss"] == pytest.approx(y["eval_loss"], rel=1e-5)
        assert x["eval"] == pytest.approx(y["eval"], rel=1e-5)
    _assert_same_run(local, sim)


# ---- a deployment where each node sees only its own file (Must show 1) ------------------------------
def _namespaces_missing() -> str | None:
    import os

    if os.geteuid() != 0:
        return "needs root for mount namespaces (unshare --mount, bind mounts)"
    if shutil.which("unshare") is None:
        return "needs util-linux unshare"
    import subprocess

    if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0:
        return "unshare --mount is not permitted here"
    return None


class Forward:
    """A TCP forwarder from a node's veth address (host side) to the SuperLink on 127.0.0.1, so the
    SuperLink itself listens on loopback only. Threads; closed with close()."""

    def __init__(self, host: str, port: int, target: int):
        import socket
        import threading

        self.target, self.conns = target, []
        self.server = socket.create_server((host, port))
        self.server.settimeout(0.5)
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while not self.stopped:
            try:
                a, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.target))
            self.conns += [a, b]
            for x, y in ((a, b), (b, a)):
                threading.Thread(target=self._pipe, args=(x, y), daemon=True).start()

    @staticmethod
    def _pipe(x, y) -> None:
        try:
            while data := x.recv(65536):
                y.sendall(data)
        except OSError:
            pass
        finally:
            for s in (x, y):
                try:
                    s.shutdown(2)
                except OSError:
                    pass

    def close(self) -> None:
        self.stopped = True
        self.server.close()
        for c in self.conns:
            c.close()


def veth_namespace(index: int) -> tuple[str, str, str] | None:
    """A network namespace joined to this one by a veth pair (10.213.<index>.1 here, .2 there), or
    None where that cannot be made. Returns (namespace, host address, node address)."""
    import os
    import subprocess

    tag = f"{os.getpid() % 100000}x{index}"
    ns, here, there = f"fsq{tag}", f"fsqh{tag}", f"fsqn{tag}"
    host, node = f"10.213.{index}.1", f"10.213.{index}.2"
    steps = [
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", here, "type", "veth", "peer", "name", there],
        ["ip", "link", "set", there, "netns", ns],
        ["ip", "addr", "add", f"{host}/30", "dev", here],
        ["ip", "link", "set", here, "up"],
        ["ip", "-n", ns, "addr", "add", f"{node}/30", "dev", there],
        ["ip", "-n", ns, "link", "set", there, "up"],
        ["ip", "-n", ns, "link", "set", "lo", "up"],
    ]
    if shutil.which("ip") is None:
        return None
    for step in steps:
        if subprocess.run(step, capture_output=True).returncode != 0:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            subprocess.run(["ip", "link", "del", here], capture_output=True)
            return None
    return ns, host, node


def drop_namespace(ns: str) -> None:
    import subprocess

    subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # its veth end goes, and so the pair


@pytest.mark.integration
@pytest.mark.skipif(_namespaces_missing() is not None, reason=str(_namespaces_missing()))
def test_each_node_sees_only_its_own_file_and_the_coordinator_none(tmp_path, corpus):
    """SuperLink (and so its ServerApp) in a mount namespace with a tmpfs over the data folder; each
    SuperNode (and so its ClientApps) in one where a tmpfs covers the data folder too, its own
    file bind-mounted alone into an otherwise empty folder. Each SuperNode also in a network
    namespace of its own, joined by a veth pair (10.213.i.1 <-> 10.213.i.2) and a forwarder to the
    SuperLink on 127.0.0.1, where `ip netns` works; else on loopback."""
    import os
    import shlex
    import subprocess

    from fedsqueeze.runtime.flower import deploy

    data = tmp_path / "data"
    owners = write_owners(data / "owners", corpus)
    corpus.unlink()  # the pooled corpus the owners were cut from: on no machine of this deployment
    names = sorted(p.stem for p in owners.iterdir())
    cfg = owners_config(tmp_path, corpus, owners, **{"train.rounds": "1", "runtime.round_timeout": "150"})
    local_run(cfg, tmp_path / "local")
    coord = tmp_path / "coord"
    (coord / "views").mkdir(parents=True)
    home = coord / "flwr-home"
    env = deploy.flower_env(home)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    port = deploy.free_port()
    procs: list[subprocess.Popen] = []

    def start(name: str, setup: list[str], cmd: list[str], netns: str | None = None) -> None:
        script = "set -e; " + "; ".join(setup) + f"; ls -A {shlex.quote(str(data))} > {coord}/views/{name}.txt"
        script += f"; find {shlex.quote(str(tmp_path))} -name '*.jsonl' -o -name '*.csv' -o -name '*.json' -type f"
        script += f" | grep -v '^{coord}' >> {coord}/views/{name}.txt || true; exec " + shlex.join(cmd)
        log = open(coord / f"{name}.log", "w")
        procs.append(
            subprocess.Popen(
                (["ip", "netns", "exec", netns] if netns else [])
                + ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                env=env,
                cwd=coord,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

    hide = f"mount -t tmpfs fsq-empty {shlex.quote(str(data))}"
    hide_local = f"mount -t tmpfs fsq-empty {shlex.quote(str(tmp_path / 'local'))}"  # the in-process run
    nets, forwards = [], []
    try:
        start("superlink", [hide, hide_local], deploy.superlink_command(port))
        deploy.wait_for_port(port)
        deploy.write_connection(home, f"127.0.0.1:{port}")
        for name in names:
            real = next(owners.glob(f"{name}.*"))
            view = tmp_path / "nodes" / name
            view.mkdir(parents=True)
            mine = view / real.name
            setup = [
                f"mount -t tmpfs fsq-view {shlex.quote(str(view))}",
                f"touch {shlex.quote(str(mine))}",
                f"mount --bind {shlex.quote(str(real))} {shlex.quote(str(mine))}",
                hide,
                hide_local,
            ]
            net = veth_namespace(len(nets) + 1)
            superlink = f"127.0.0.1:{port}"
            if net is not None:
                nets.append(net)
                forwards.append(Forward(net[1], port, port))
                superlink = f"{net[1]}:{port}"
            command = deploy.supernode_command(superlink, None, None, deploy.free_port(), data=mine)
            start(f"node-{name}", setup, command, net[0] if net else None)
        out = coord / "deployed"
        loaded = config_mod.load(cfg)  # the submitter has the folder: data.owners travel in the config
        run_config = deploy.write_run_config(coord / "run.toml", loaded.to_toml(), out)
        run = subprocess.run(
            deploy.run_command(run_config), env=env, cwd=coord, capture_output=True, text=True, timeout=480
        )
        logs = "\n".join(f"--- {p.name} ---\n{p.read_text()[-2500:]}" for p in sorted(coord.glob("*.log")))
        assert run.returncode == 0 and (out / "summary.json").is_file(), run.stdout[-3000:] + logs
    finally:
        for proc in procs:
            deploy.kill_tree(proc.pid)
        for proc in procs:
            proc.wait()
        for forward in forwards:
            forward.close()
        for net in nets:
            drop_namespace(net[0])
    # What each process saw: the coordinator no data file at all, each node its own file only.
    assert (coord / "views" / "superlink.txt").read_text().split() == []
    for name in names:
        seen = (coord / "views" / f"node-{name}.txt").read_text().split()
        assert [Path(p).stem for p in seen] == [name], seen
    a, b = rounds(tmp_path / "local"), rounds(out)
    for x, y in zip(a, b, strict=True):
        for key in ("clients", "bytes_up", "bytes_down", "per_client", "eval_down", "eval_tokens"):
            assert x[key] == y[key], key
        assert set(y["eval"]) == set(names)
        assert x["eval_loss"] == pytest.approx(y["eval_loss"], rel=1e-4)
    assert os.path.isdir(out / "adapter")


def test_supernode_takes_the_owners_file_as_its_node_config(tmp_path, cli):
    from flwr.common.config import parse_config_args

    from fedsqueeze.runtime.flower.deploy import supernode_command

    file = tmp_path / "alice.jsonl"
    file.write_text("{}\n")
    cmd = supernode_command("127.0.0.1:9093", None, None, 9100, data=file)
    assert parse_config_args([cmd[cmd.index("--node-config") + 1]]) == {"data-path": str(file.resolve())}
    res = cli("flower", "supernode", "--superlink", "127.0.0.1:9093", "--no-restart")
    assert res.exit_code == 2 and "--data FILE" in res.output
    res = cli("flower", "supernode", "--superlink", "127.0.0.1:9093", "--data", tmp_path / "nobody.csv")
    assert res.exit_code == 2 and "file not found" in res.output


# ---- evaluation riding on the next train message (eval.ride) ------------------------------------
FIGURES = ("eval_loss", "eval", "eval_tokens", "eval_examples", "eval_sets")


def same_figures(x: dict, y: dict) -> None:
    assert x["eval_loss"] == pytest.approx(y["eval_loss"], rel=1e-6), x["round"]
    assert x["eval"] == pytest.approx(y["eval"], rel=1e-6), x["round"]
    assert [x[k] for k in FIGURES[2:]] == [y[k] for k in FIGURES[2:]], x["round"]


def test_an_evaluation_riding_on_the_next_train_message_equals_evaluate_messages_and_costs_nothing(
    tmp_path, corpus, owners
):
    """Round r's global adapter judged by its owners on round r + 1's train message gives the very
    figures of evaluate messages after round r; the training is untouched (same bytes up, same
    adapter); only the last round's evaluation (and nothing else) is billed."""
    cfg = owners_config(tmp_path, corpus, owners, **{"train.rounds": "3"})
    ride, lines = local_run(cfg, tmp_path / "ride")
    sent, _ = local_run(cfg, tmp_path / "sent", ["eval.ride=false"])
    a, b = rounds(tmp_path / "ride"), rounds(tmp_path / "sent")
    for x, y in zip(a, b):
        same_figures(x, y)
        assert "eval_pending" not in x
        assert x["bytes_up"] == y["bytes_up"] and x["train_loss"] == y["train_loss"]
        if x["round"] < 3:  # judged on the next round's train messages: nothing sent for it
            assert x["eval_on_train"] == [0, 1, 2] and "eval_down" not in x
            # (round 1's evaluate messages also carried the base model's evaluation)
            assert x["bytes_down"] == y["bytes_down"] - sum(y["eval_down"].values())
        else:  # the last round has no train message after it
            assert x["eval_down"] == y["eval_down"] and "eval_on_train" not in x
    assert ride["base_eval_loss"] == pytest.approx(sent["base_eval_loss"], rel=1e-6)
    assert ride["final_eval_loss"] == pytest.approx(sent["final_eval_loss"], rel=1e-6)
    for name in ("ride", "sent"):  # the same adapter saved
        assert (tmp_path / name / "adapter" / "adapter_model.safetensors").is_file()
    saved = [(tmp_path / n / "adapter" / "adapter_model.safetensors").read_bytes() for n in ("ride", "sent")]
    assert saved[0] == saved[1]
    assert any("before training: eval loss" in line and "round 1's train messages" in line for line in lines)


def test_owners_not_sampled_next_round_get_evaluate_messages(tmp_path, corpus, owners):
    """Two of three owners per round: the owner left out of round r + 1 is judged by an evaluate
    message (billed in round r + 1), the others on their train messages; the figures are those of
    evaluate messages for all."""
    cfg = owners_config(tmp_path, corpus, owners, **{"train.rounds": "3", "train.clients_per_round": "2"})
    local_run(cfg, tmp_path / "ride")
    local_run(cfg, tmp_path / "sent", ["eval.ride=false"])
    a, b = rounds(tmp_path / "ride"), rounds(tmp_path / "sent")
    for x, y in zip(a, b):
        same_figures(x, y)
        assert x["bytes_up"] == y["bytes_up"]
    for x, nxt in zip(a, a[1:]):
        assert sorted(x["eval_on_train"]) == nxt["clients"]
        assert x["eval_billed_in"] == nxt["round"]
        (left,) = {0, 1, 2} - set(nxt["clients"])
        blob = b[-1]["eval_down"]["0"]  # one fp32 adapter
        if nxt["round"] < 3:  # only the owner left out got an evaluate message
            assert nxt["eval_down"] == {str(left): blob}
        else:  # and the last round's own evaluation is by evaluate messages to all
            assert nxt["eval_down"] == {str(c): blob * (2 if c == left else 1) for c in range(3)}


def test_a_run_stopped_with_its_evaluation_pending_resumes_to_the_same_records(tmp_path, corpus, owners):
    cfg_path = owners_config(tmp_path, corpus, owners, **{"train.rounds": "3"})
    whole, _ = local_run(cfg_path, tmp_path / "whole")
    cfg = config_mod.load(cfg_path)
    out = tmp_path / "cut"
    rundir.prepare(out, cfg, overwrite=True)
    assert LocalRuntime(Session.build(cfg, log=lambda *_: None), out).run(until=2) is None
    assert rounds(out)[-1]["eval_pending"] is True and "eval_loss" not in rounds(out)[-1]
    runtime = LocalRuntime(Session.build(cfg, log=lambda *_: None), out)
    runtime.restore()
    summary = runtime.run()
    for x, y in zip(rounds(out), rounds(tmp_path / "whole")):
        same_figures(x, y)
        assert (x["bytes_up"], x["bytes_down"]) == (y["bytes_up"], y["bytes_down"])
    assert summary["final_eval_loss"] == pytest.approx(whole["final_eval_loss"], rel=1e-6)


def test_a_bad_judgement_on_a_train_reply_is_rejected_and_the_round_goes_on(tmp_path, corpus, owners, monkeypatch):
    from fedsqueeze.runtime import roles

    honest = roles.score

    def score(s, client, adapter):
        sums = honest(s, client, adapter)
        return {**sums, "eval_loss_sum": float("nan")} if client == 1 else sums

    monkeypatch.setattr(roles, "score", score)
    cfg = owners_config(tmp_path, corpus, owners)
    summary, lines = local_run(cfg, tmp_path / "run")
    first = rounds(tmp_path / "run")[0]
    assert first["eval_on_train"] == [0, 1, 2] and first["eval_sets"] == ["alice", "carol"]
    assert any("client 1's evaluation rejected (eval_loss_sum is not a finite number" in line for line in lines)
    assert summary["final_eval_loss"] == summary["final_eval_loss"]  # the last round's, by evaluate message
