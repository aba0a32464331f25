"""The bytes that really cross the wire between the SuperNodes and the SuperLink, counted by a TCP
proxy, beside the ledger's bytes_down / bytes_up. Only 127.0.0.1 is used.

Each SuperNode dials its own proxy listener, which forwards to the SuperLink's port, so every byte
is counted per node and per direction (SuperLink -> node: down, node -> SuperLink: up). The Fleet
API is protobuf over plain HTTP/1.1 (insecure here), so the proxy also reads the request lines and
headers and attributes bytes to each endpoint (pull-object, push-object, pull-messages, heartbeat,
get-fab...) and records any Content-Encoding (compression) it sees. The ServerApp and `flwr run`
talk to the SuperLink directly, not through the proxy.

Beside the ledger's blob bytes, a Flower run's rounds.jsonl has wire_down / wire_up (runtime/flower/wire.py
`fleet_bytes`: each message's serialized bytes and its Fleet calls' HTTP heads); the tables compare both
with the proxy, per message.

Per message: the same config with R1 and R2 rounds; (proxy(R2) - proxy(R1)) / extra messages is
what one more message costs on the wire, fixed costs (app bundle, start-up polling, the partition
query) cancel out; the fixed overhead is proxy(R1) minus R1 rounds' worth of messages.

    python benchmarks/wire_proxy.py [METHOD ...] [--rounds 1 3] [--json FILE]
    python benchmarks/wire_proxy.py fedavg --rounds 2 --kill-node-after 2
    python benchmarks/wire_proxy.py fedavg --evaluate [--lora-r 64]
    (--evaluate: eval.at = "clients", 3 rounds with eval.every 3 and 1: the 2 x 4 evaluate messages
    more, on the wire and in the ledger's eval_down, per message; then the same two with eval.ride:
    the 2 x 4 judgements riding on train messages more)
    (default: fedavg fedsrd, 1 and 3 rounds; --kill-node-after N: one run, SuperNode 3 killed
    after its N-th reply, and the ledger's bill for it beside what its connections carried;
    --from-json FILE prints the tables of an earlier --json again)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fedsqueeze.runtime.flower import deploy  # noqa: E402
from flower_overhead import loopback, run  # noqa: E402

CLIENTS = 4


class HttpReader:
    """Splits one direction of an HTTP/1.1 connection into messages (start line, headers, body
    length by Content-Length or chunked). `on_message(start_line, headers, wire_bytes, body)` is
    called per complete message; `body` is the (de-chunked) body where `want_body(start_line,
    headers)` asked for it, else None. Stops reading (and says so) on anything it does not
    understand; the raw byte count does not depend on it."""

    def __init__(self, on_message, want_body=None):
        self.buf = bytearray()
        self.on_message = on_message
        self.want_body = want_body or (lambda start, headers: False)
        self.body: bytearray | None = None
        self.head: tuple[str, dict] | None = None
        self.head_len = 0
        self.body_left = 0
        self.chunked = False
        self.broken = ""

    def feed(self, data: bytes) -> None:
        if self.broken:
            return
        self.buf += data
        try:
            while self._step():
                pass
        except ValueError as exc:
            self.broken = str(exc)

    def _step(self) -> bool:
        if self.head is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return False
            lines = self.buf[:end].decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
            self.head, self.head_len = (lines[0], headers), end + 4
            del self.buf[: end + 4]
            self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            self.body_left = 0 if self.chunked else int(headers.get("content-length", "0"))
            self.body_len = 0
            self.body = bytearray() if self.want_body(lines[0], headers) else None
        if self.chunked:
            while True:
                end = self.buf.find(b"\r\n")
                if end < 0:
                    return False
                size = int(bytes(self.buf[:end]).split(b";")[0], 16)
                if len(self.buf) < end + 2 + size + 2:
                    return False
                if self.body is not None:
                    self.body += self.buf[end + 2 : end + 2 + size]
                del self.buf[: end + 2 + size + 2]
                self.body_len += end + 2 + size + 2
                if size == 0:  # no trailers from httpx / uvicorn
                    break
        else:
            take = min(self.body_left, len(self.buf))
            if self.body is not None:
                self.body += self.buf[:take]
            del self.buf[:take]
            self.body_left -= take
            self.body_len += take
            if self.body_left:
                return False
        (start, headers), self.head = self.head, None
        body = bytes(self.body) if self.body is not None else None
        self.on_message(start, headers, self.head_len + self.body_len, body)
        return True


PULL_MESSAGES = "/pull-messages"
IDLE = " (idle: no message)"


def idle_poll(body: bytes, headers: dict) -> bool:
    """Whether a pull-messages response carried no message (a node's poll while it waits or works)."""
    import zlib

    from flwr.proto.fleet_pb2 import PullMessagesResponse

    encoding = headers.get("content-encoding", "").lower()
    if encoding in ("gzip", "deflate"):
        body = zlib.decompress(body, 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        return len(PullMessagesResponse.FromString(body).messages_list) == 0
    except Exception:  # not a response we understand: counted as a message call
        return False


class Counter:
    """Bytes per direction, per endpoint (requests matched to responses in order: HTTP/1.1 without
    pipelining), connections, and the encodings seen."""

    def __init__(self):
        self.lock = threading.Lock()
        self.raw = {"up": 0, "down": 0}
        self.paths: dict[str, dict] = collections.defaultdict(lambda: {"calls": 0, "up": 0, "down": 0})
        self.connections = 0
        self.encodings: collections.Counter = collections.Counter()
        self.unparsed: list[str] = []

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "up": self.raw["up"],
                "down": self.raw["down"],
                "connections": self.connections,
                "paths": {k: dict(v) for k, v in self.paths.items()},
                "encodings": dict(self.encodings),
                "unparsed": list(self.unparsed),
            }


class WireProxy:
    """One listener per SuperNode on 127.0.0.1, each forwarding to the SuperLink's port, in an
    asyncio loop on a background thread. `counters[i]`: what node i's connections carried."""

    def __init__(self, target_port: int, nodes: int):
        self.target = target_port
        self.counters = [Counter() for _ in range(nodes)]
        self.ports: list[int] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> WireProxy:
        self.thread.start()
        self.servers = asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(30)
        return self

    def __exit__(self, *exc) -> None:
        async def close():
            for server in self.servers:
                server.close()
            tasks = asyncio.all_tasks() - {asyncio.current_task()}
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)

    async def _listen(self):
        servers = []
        for counter in self.counters:
            server = await asyncio.start_server(
                lambda r, w, c=counter: self._serve(r, w, c), "127.0.0.1", 0, reuse_address=True
            )
            self.ports.append(server.sockets[0].getsockname()[1])
            servers.append(server)
        return servers

    async def _serve(self, reader, writer, counter: Counter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:  # the SuperLink is down: the node sees a refused connection, as it would without us
            writer.close()
            return
        pending: collections.deque = collections.deque()  # (path, request bytes) awaiting a response

        def request(start: str, headers: dict, size: int, body: bytes | None) -> None:
            path = start.split(" ")[1] if " " in start else start
            pending.append((path, size))
            counter.paths[path]["calls"] += 1
            counter.paths[path]["up"] += size
            for key in ("content-encoding", "transfer-encoding"):
                if key in headers:
                    counter.encodings[f"request {key}: {headers[key]}"] += 1
            if "accept-encoding" in headers:
                counter.encodings[f"request accept-encoding: {headers['accept-encoding']}"] += 1

        def response(start: str, headers: dict, size: int, body: bytes | None) -> None:
            path, asked = pending.popleft() if pending else ("(unmatched response)", 0)
            if body is not None and idle_poll(body, headers):  # follows time, not messages: apart
                counter.paths[path]["calls"] -= 1
                counter.paths[path]["up"] -= asked
                path = path + IDLE
                counter.paths[path]["calls"] += 1
                counter.paths[path]["up"] += asked
            counter.paths[path]["down"] += size
            for key in ("content-encoding", "transfer-encoding"):
                if key in headers:
                    counter.encodings[f"response {key}: {headers[key]}"] += 1
            counter.encodings[f"response content-type: {headers.get('content-type', '-')}"] += 1

        with counter.lock:
            counter.connections += 1
        polls = lambda start, headers: bool(pending) and pending[0][0].endswith(PULL_MESSAGES)  # noqa: E731
        parsers = {"up": HttpReader(request), "down": HttpReader(response, polls)}

        async def pump(src, dst, direction: str) -> None:
            try:
                while data := await src.read(65536):
                    with counter.lock:
                        counter.raw[direction] += len(data)
                        parsers[direction].feed(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                try:
                    dst.close()
                except RuntimeError:
                    pass

        try:
            await asyncio.gather(pump(reader, up_writer, "up"), pump(up_reader, writer, "down"))
        except asyncio.CancelledError:  # the proxy closes
            pass
        with counter.lock:
            for direction, parser in parsers.items():
                if parser.broken:
                    counter.unparsed.append(f"{direction}: {parser.broken}")


def total(snaps: list[dict]) -> dict:
    out = {"up": 0, "down": 0, "connections": 0, "paths": {}, "encodings": collections.Counter(), "unparsed": []}
    for s in snaps:
        out["up"] += s["up"]
        out["down"] += s["down"]
        out["connections"] += s["connections"]
        out["encodings"].update(s["encodings"])
        out["unparsed"] += s["unparsed"]
        for path, v in s["paths"].items():
            row = out["paths"].setdefault(path, {"calls": 0, "up": 0, "down": 0})
            for k in row:
                row[k] += v[k]
    return out


def ledger(out: Path) -> dict:
    """The run's ledger: blob bytes (bytes_down / bytes_up) and the Flower wire field (wire_down /
    wire_up: the messages' serialized bytes and their Fleet calls' HTTP heads)."""
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines() if line.strip()]
    out = {"rows": rows, "up": sum(r["bytes_up"] for r in rows), "down": sum(r["bytes_down"] for r in rows)}
    out.update({key: sum(r.get(key, 0) for r in rows) for key in ("wire_down", "wire_up")})
    return out


def measure(method: str, rounds: int, tmp: Path, kill_after: int = 0, r: int = 4, extra: str = "") -> dict:
    """One fresh deployment (SuperLink, 4 SuperNodes, each behind its own proxy listener), one run.
    kill_after > 0: SuperNode 3 is killed once it has sent that many replies (push-messages)."""
    tag = (
        f"{method}-{rounds}" + (f"-kill{kill_after}" if kill_after else "") + (f"-{abs(hash(extra))}" if extra else "")
    )
    holder: dict = {}

    def dial(port: int, partition: int) -> str:
        if "proxy" not in holder:
            holder["proxy"] = WireProxy(port, CLIENTS).__enter__()
        return f"127.0.0.1:{holder['proxy'].ports[partition]}"

    t0 = time.monotonic()
    try:
        with loopback(tmp, tag, CLIENTS, dial=dial) as (env, _, procs, _):
            if kill_after:
                args = (holder["proxy"], procs, kill_after)
                threading.Thread(target=kill_node_after, args=args, daemon=True).start()
            _, flower, summary = run(tmp, tag, env, method, rounds, r=r, extra=extra)
            time.sleep(1)  # the last confirm / heartbeat replies
            snaps = [c.snapshot() for c in holder["proxy"].counters]
    finally:
        if "proxy" in holder:
            holder["proxy"].__exit__()
    book = ledger(tmp / f"run-{tag}")
    return {
        "method": method,
        "rounds": rounds,
        "killed_after": kill_after,
        "seconds": time.monotonic() - t0,
        "ledger": book,
        "flower": flower,
        "nodes": snaps,
        "proxy": total(snaps),
    }


def kill_node_after(proxy: WireProxy, procs: dict, replies: int, node: int = CLIENTS - 1) -> None:
    """Kills SuperNode `node` once it has sent `replies` messages (1: the partition query, 2: also
    round 1): the ServerApp then sends it the next round's downlink while the SuperLink still lists
    it (until it misses its heartbeats), and the node never pulls it."""
    while proxy.counters[node].snapshot()["paths"].get("/v1/fleet/push-messages", {}).get("calls", 0) < replies:
        time.sleep(0.2)
    time.sleep(1.0)  # its push-object calls (the reply's content) follow push-messages
    deploy.kill_tree(procs[f"node-{node}"].pid)
    with proxy.counters[node].lock:
        proxy.counters[node].paths["(killed here)"]["calls"] += 1


def evaluate_messages(method: str, tmp: Path, r: int) -> None:
    """The wire's bytes per evaluate message (eval.at = "clients", eval.ride off) beside the ledger's:
    two runs of 3 rounds, evaluated after every round or only after the last; they differ by 2
    evaluate messages per SuperNode and nothing else. The same two runs with eval.ride: what
    judgements riding on the next train messages cost on the wire instead (`riding`)."""
    runs = {}
    for every, ride in ((3, "false"), (1, "false"), (3, "true"), (1, "true")):
        extra = f'[eval]\nat = "clients"\nevery = {every}\nride = {ride}\n'
        runs[every, ride] = measure(method, 3, tmp, r=r, extra=extra)
        print(f"# {method}, eval.every {every}, ride {ride}: {runs[every, ride]['seconds']:.0f} s", flush=True)
    riding(runs[3, "true"], runs[1, "true"])
    more = 2 * CLIENTS
    a, b = runs[3, "false"], runs[1, "false"]
    billed = [sum(sum(row.get("eval_down", {}).values()) for row in x["ledger"]["rows"]) for x in (a, b)]
    ledger_msg = (billed[1] - billed[0]) / more
    proxy_down = (b["proxy"]["down"] - a["proxy"]["down"]) / more
    proxy_up = (b["proxy"]["up"] - a["proxy"]["up"]) / more
    wire_down = (b["ledger"]["wire_down"] - a["ledger"]["wire_down"]) / more
    wire_up = (b["ledger"]["wire_up"] - a["ledger"]["wire_up"]) / more
    calls_down = (message_calls(b, "down") - message_calls(a, "down")) / more
    calls_up = (message_calls(b, "up") - message_calls(a, "up")) / more
    print(f"\nEvaluate messages, {method}, lora.r = {r}, 4 SuperNodes: {more} more in the second run")
    print(
        "| ledger blob per evaluate message (down) | proxy per message down | proxy / blob "
        "| wire_down per message | proxy / wire_down | proxy per reply up | wire_up per reply | proxy / wire_up |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {fmt(ledger_msg)} | {fmt(proxy_down)} | {proxy_down / max(ledger_msg, 1):.3f} | {fmt(wire_down)} | "
        f"{proxy_down / max(wire_down, 1):.3f} | {fmt(proxy_up)} | {fmt(wire_up)} | {proxy_up / max(wire_up, 1):.3f} |"
    )
    print(
        "\nThe message's own Fleet calls only (pull-messages that brought it, pull-object, confirm, "
        "push-messages, push-object; without the idle polls and heartbeats the node sent while it scored):"
    )
    print("| proxy down | proxy / wire_down | proxy up | proxy / wire_up |")
    print("|---:|---:|---:|---:|")
    print(
        f"| {fmt(calls_down)} | {calls_down / max(wire_down, 1):.3f} | {fmt(calls_up)} | "
        f"{calls_up / max(wire_up, 1):.3f} |"
    )
    print("\nPer evaluate message, by endpoint (second run minus first, over the extra messages):")
    print("| endpoint | calls | down | up |")
    print("|---|---:|---:|---:|")
    for path in sorted(set(a["proxy"]["paths"]) | set(b["proxy"]["paths"])):
        pa, pb = a["proxy"]["paths"].get(path, {}), b["proxy"]["paths"].get(path, {})
        d = {k: (pb.get(k, 0) - pa.get(k, 0)) / more for k in ("calls", "down", "up")}
        print(f"| {path} | {d['calls']:.2f} | {fmt(d['down'])} | {fmt(d['up'])} |")


def riding(a: dict, b: dict) -> None:
    """Both runs ride (eval.ride): run b judged rounds 0-2 on the train messages of rounds 1-3, run a
    only round 0 (on round 1's); both judged round 3 by evaluate messages. Per train message that
    carried a judgement more: the ledger's blob bytes (nothing), its wire fields and the proxy's calls."""
    more = 2 * CLIENTS
    rows = [sum(len(row.get("eval_on_train", [])) for row in x["ledger"]["rows"]) for x in (a, b)]
    print(f"\nJudgements riding on train messages (eval.ride): {rows[1] - rows[0]} more in the second run")
    print("| | ledger down | ledger up | wire_down | wire_up | proxy message calls down | up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    cells = [(b["ledger"][k] - a["ledger"][k]) / more for k in ("down", "up", "wire_down", "wire_up")] + [
        (message_calls(b, k) - message_calls(a, k)) / more for k in ("down", "up")
    ]
    print("| per judgement | " + " | ".join(fmt(c) for c in cells) + " |")


MESSAGE_ENDPOINTS = ("pull-object", "push-object", "pull-messages", "push-messages", "confirm-message-received")


def message_calls(run: dict, direction: str) -> int:
    """A run's bytes in `direction` on the calls that move messages (idle polls and heartbeats apart)."""
    paths = run["proxy"]["paths"]
    return sum(paths.get(f"/v1/fleet/{e}", {}).get(direction, 0) for e in MESSAGE_ENDPOINTS)


def fmt(x: float) -> str:
    return f"{x:,.0f}"


def report(results: list[dict]) -> None:
    plain = [r for r in results if not r.get("killed_after")]
    print("Per run, 4 SuperNodes: the proxy's bytes on the SuperNodes' TCP connections to the SuperLink")
    print(
        "| method | rounds | ledger down | proxy down | of which app bundle | ledger up | proxy up "
        "| proxy / ledger (both ways, without the bundle) | Flower's count |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in plain:
        lg, px = r["ledger"], r["proxy"]
        fab = px["paths"].get("/v1/fleet/get-fab", {"up": 0, "down": 0})
        ratio = (px["down"] + px["up"] - fab["down"] - fab["up"]) / max(lg["down"] + lg["up"], 1)
        print(
            f"| {r['method']} | {r['rounds']} | {fmt(lg['down'])} | {fmt(px['down'])} | {fmt(fab['down'])} | "
            f"{fmt(lg['up'])} | {fmt(px['up'])} | {ratio:.2f} | {fmt(r['flower'])} |"
        )
    print("\nPer message and fixed: runs with R1 and R2 rounds of the same method; extra = (R2 - R1) x 4 messages")
    print("each way; overhead per message = (proxy(R2) - proxy(R1) - ledger(R2) + ledger(R1)) / extra; fixed =")
    print("proxy(R1) - ledger(R1) - R1 x 4 x overhead per message.")
    print(
        "| method | rounds | ledger blob per message down / up | proxy per message down / up "
        "| overhead per message down / up | of which message endpoints down / up | fixed down / up "
        "| wire per message down / up | proxy / wire down / up | message calls / wire down / up |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    by_method: dict = {}
    for r in plain:
        by_method.setdefault(r["method"], []).append(r)
    for method, runs in by_method.items():
        runs.sort(key=lambda r: r["rounds"])
        for a, b in zip(runs, runs[1:]):
            extra = (b["rounds"] - a["rounds"]) * CLIENTS
            cells = {}
            for k in ("down", "up"):
                proxy = (b["proxy"][k] - a["proxy"][k]) / extra
                blob = (b["ledger"][k] - a["ledger"][k]) / extra
                endpoints = (message_calls(b, k) - message_calls(a, k)) / extra
                fixed = a["proxy"][k] - a["ledger"][k] - a["rounds"] * CLIENTS * (proxy - blob)
                wire = (b["ledger"].get(f"wire_{k}", 0) - a["ledger"].get(f"wire_{k}", 0)) / extra
                cells[k] = (blob, proxy, proxy - blob, endpoints - blob, fixed, wire)
            ratios = " / ".join(f"{cells[k][1] / cells[k][5]:.3f}" if cells[k][5] else "-" for k in ("down", "up"))
            calls = " / ".join(
                f"{(cells[k][3] + cells[k][0]) / cells[k][5]:.3f}" if cells[k][5] else "-" for k in ("down", "up")
            )
            print(
                f"| {method} | {a['rounds']} -> {b['rounds']} | "
                + " | ".join(f"{fmt(cells['down'][i])} / {fmt(cells['up'][i])}" for i in range(6))
                + f" | {ratios} | {calls} |"
            )
    for r in results:
        px = r["proxy"]
        print(f"\n{r['method']}, {r['rounds']} rounds, {r['seconds']:.0f} s, {px['connections']} TCP connections")
        print("| endpoint | calls | up (node -> SuperLink) | down (SuperLink -> node) |")
        print("|---|---:|---:|---:|")
        for path, v in sorted(px["paths"].items(), key=lambda kv: -(kv[1]["up"] + kv[1]["down"])):
            print(f"| {path} | {v['calls']} | {fmt(v['up'])} | {fmt(v['down'])} |")
        print("headers seen:", dict(px["encodings"]), "| not parsed:", px["unparsed"] or "none")
        if r.get("killed_after"):
            node = CLIENTS - 1
            billed = sum(row.get("per_client", {}).get(str(node), {}).get("down", 0) for row in r["ledger"]["rows"])
            seen = r["nodes"][node]["paths"].get("/v1/fleet/pull-object", {}).get("down", 0)
            print(
                f"SuperNode {node} killed after its reply {r['killed_after']}: the ledger bills it {fmt(billed)} B "
                f"down in all; its pull-object responses on the wire: {fmt(seen)} B; its connections: down "
                f"{fmt(r['nodes'][node]['down'])} B, up {fmt(r['nodes'][node]['up'])} B"
            )
            for row in r["ledger"]["rows"]:
                keep = ("round", "clients", "left_out", "bytes_down", "bytes_up", "undelivered")
                print(" ", {k: row.get(k) for k in keep}, "client", node, row.get("per_client", {}).get(str(node)))


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("methods", nargs="*", default=["fedavg", "fedsrd"])
    ap.add_argument("--rounds", nargs="+", type=int, default=[1, 3])
    ap.add_argument(
        "--kill-node-after",
        type=int,
        default=0,
        metavar="N",
        help="instead: one run of --rounds[-1] rounds per method, SuperNode 3 killed after its N-th reply",
    )
    ap.add_argument("--evaluate", action="store_true", help="instead: bytes per evaluate message (eval.at clients)")
    ap.add_argument("--lora-r", type=int, default=4, help="LoRA rank (the blob's size) of the runs")
    ap.add_argument("--json", type=Path, help="also write every measurement here")
    ap.add_argument("--from-json", type=Path, help="only print the tables of an earlier --json")
    args = ap.parse_args(argv)
    if args.from_json:
        return report(json.loads(args.from_json.read_text()))
    if args.evaluate:
        with tempfile.TemporaryDirectory(prefix="fsq-wire-") as tmp:
            for method in args.methods:
                evaluate_messages(method, Path(tmp), args.lora_r)
        return None
    results = []
    with tempfile.TemporaryDirectory(prefix="fsq-wire-") as tmp:
        for method in args.methods:
            for rounds in [args.rounds[-1]] if args.kill_node_after else args.rounds:
                results.append(measure(method, rounds, Path(tmp), args.kill_node_after))
                print(f"# {method}, {rounds} rounds: {results[-1]['seconds']:.0f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    report(results)


if __name__ == "__main__":
    main(sys.argv[1:])
