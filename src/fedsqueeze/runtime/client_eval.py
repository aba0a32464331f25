"""Evaluation where the data is (`eval.at = "clients" | "both"`).

After an evaluated round (and for the base model, round 0) each owner of the round's eval sample judges
the global adapter. Where it can, that rides on the next round's train message (`eval.ride`, `rides`):
the message carries a flag, the owner scores the adapter it has just received before it trains, and its
sums come back in its reply (`Reply.eval`): no byte more, and round r's figures are written into round
r's record when round r + 1's replies are in (driver.py). Otherwise (the last round, owners not sampled
in round r + 1, a method whose clients do not receive the global adapter exactly, eval.at = "both") the
server sends the global adapter to the owner in an evaluate message (Flower: its `evaluate` message
type), billed as downlink like any other blob. Each owner judges it on its own held-out split only (its
loss and every `eval.metrics`; choice distractors from its own examples) and replies sums and counts
(`score`); the server's figure is the count-weighted mean (`combine`): for the loss the response tokens,
so with every owner judged it equals a pooled evaluation of the same examples. Each owner's figures stay
in the record beside it. Where the counts are claims (per-owner data) no owner's weight may exceed
`server.max_client_weight` (runtime/claims.py).

A classify task's owner replies its confusion matrix as counts (`confusion_T_P`: items of true label
T predicted as P, the non-zero cells) and `classify_n`; the server sums the matrices (a capped
owner's cells scaled to its counted weight) and derives acc, acc_se, macro-F1, chance and majority
from the sum, as the server-side pooled evaluation does (scoring/judge.py `pooled_means`).

The out-of-domain set (`data.ood_source`) is no owner's data but a yardstick the coordinator holds:
the coordinator judges it with the global adapter under every `eval.at` (under "both" within the
server's own evaluation), so no evaluate message carries it and no owner needs its file.

The in-process runtime scores its clients here, in this process; a remote transport (Flower's
GridTransport) implements `evaluate(rnd, blobs) -> {client: sums or None}`.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

from ..codecs import build_codec
from ..data.owners import eval_at
from ..evaluation import MAX_BATCH, evaluate_round, ood_loss, sampled_sets, task_metrics
from ..tensors import Tensors, fp32_bytes
from .claims import cap_text, cap_weights, claims_counted

# Per task metric: the reply's sum keys and the count that weighs them.
METRIC_COUNTS = {"acc": "choice_n", "acc_norm": "choice_n", "chance": "choice_n", "rougeL": "generate_n"}
METRIC_COUNTS["exact"] = "generate_n"
LOSS_SUM, TOKENS, EXAMPLES = "eval_loss_sum", "eval_tokens", "eval_examples"
CELL, CLASSIFY_N = "confusion_", "classify_n"  # classify: confusion_T_P counts, and their total
COUNTS = (TOKENS, EXAMPLES, "choice_n", "generate_n", CLASSIFY_N)


def cell_key(true: int, predicted: int) -> str:
    return f"{CELL}{true}_{predicted}"


def cell_of(key: str) -> tuple[int, int] | None:
    """(true, predicted) of a `confusion_T_P` key, or None where the key is not one."""
    if not key.startswith(CELL):
        return None
    parts = key[len(CELL) :].split("_")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return None
    return int(parts[0]), int(parts[1])


# ---- the owner's side ------------------------------------------------------------------------------
def eval_spec(s) -> str:
    """The codec of evaluate messages: the downlink's where it is lossless (the owner must judge
    the very adapter), else plain fp32."""
    return s.downlink_spec if build_codec(s.downlink_spec, s.adapter.layout).lossless else "fp32"


def decode_blob(s, blob: bytes) -> Tensors:
    return build_codec(eval_spec(s), s.adapter.layout).decode(blob)


def score(s, client: int, adapter: Tensors) -> dict[str, float]:
    """Sums and counts of `adapter` on `client`'s own held-out split (nothing else is read)."""
    from ..client import example_losses
    from ..scoring.judge import set_metrics

    data = s.federation.clients[client]
    s.adapter.set(adapter)
    pad = s.tokenizer.pad_token_id
    idx = list(range(len(data.eval)))
    batches = (data.eval.batch(idx[i : i + MAX_BATCH], pad) for i in range(0, len(idx), MAX_BATCH))
    losses = example_losses(s.model, batches, s.placement)
    out = {
        LOSS_SUM: float(sum(loss for loss, _ in losses)),
        TOKENS: int(sum(n for _, n in losses)),
        EXAMPLES: len(losses),
    }
    metrics = task_metrics(s.cfg)
    if metrics:
        # The owner's own examples only, also for the choice questions' distractors.
        scope = SimpleNamespace(eval_examples={data.name: data.eval_examples}, labels=s.federation.labels)
        view = SimpleNamespace(cfg=s.cfg, model=s.model, tokenizer=s.tokenizer, placement=s.placement, federation=scope)
        found = set_metrics(view, data.name, metrics)
        for key, count in METRIC_COUNTS.items():
            if key in found and count in found:
                out[f"{key}_sum"] = float(found[key]) * int(found[count])
        out.update({k: int(found[k]) for k in ("choice_n", "generate_n", CLASSIFY_N) if k in found})
        for true, predicted, count in found.get("confusion", []):
            out[cell_key(true, predicted)] = int(count)
    return out


def score_blob(s, client: int, blob: bytes) -> dict[str, float]:
    return score(s, client, decode_blob(s, blob))


def sums_problem(sums, n_labels: int = 0) -> str | None:
    """Why an owner's evaluate reply cannot be counted, or None: a remote owner may send anything,
    so every sum must be a finite number and every count a non-negative integer (as Reply.problem
    checks a train reply); confusion cells name labels among the `n_labels` and add up to `classify_n`."""
    import math

    if not isinstance(sums, dict):
        return f"not a mapping ({type(sums).__name__})"
    for key in (LOSS_SUM, TOKENS, EXAMPLES):
        if key not in sums:
            return f"missing {key}"
    for key, value in sums.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return f"{key} is not a finite number ({value!r})"
        cell = cell_of(key)
        if (key in COUNTS or cell is not None) and (not isinstance(value, int) or value < 0):
            return f"{key} = {value!r} is not a count"
        if key.startswith(CELL) and (cell is None or max(cell) >= n_labels):
            return f"{key} is not a cell of the {n_labels}-label confusion matrix"
    cells = sum(v for k, v in sums.items() if k.startswith(CELL))
    if cells and cells != sums.get(CLASSIFY_N):
        return f"the confusion cells add up to {cells}, but {CLASSIFY_N} = {sums.get(CLASSIFY_N)!r}"
    return None


# ---- the server's side -----------------------------------------------------------------------------
def rides(driver) -> bool:
    """Whether owners judge round r's global adapter on round r + 1's train message (eval.ride): owners
    judge (eval.at = "clients"), the adapter a client receives is exactly the global one (the method's
    `eval_rides`, a lossless downlink) and the transport can carry the flag."""
    s = driver.s
    return (
        eval_at(s.cfg) == "clients"
        and s.cfg.eval.ride
        and s.method.eval_rides
        and s.method.mode.has_global_adapter
        and getattr(driver.transport, "rides_eval", False)
        and eval_spec(s) == s.downlink_spec
    )


def riders(driver, rnd: int, clients: list[int]) -> frozenset[int]:
    """Of a round's `clients`, the owners of round `rnd`'s eval sample: they judge on the train message."""
    return frozenset(sampled_sets(driver.s, rnd)) & frozenset(clients)


def judge(driver, rnd: int, ridden: dict[int, dict] | None = None) -> dict:
    """The eval fields of round `rnd` (REFERENCE_ROUND: the base adapter), as `eval.at` says. ridden:
    owners' sums that came with train replies (eval.ride); the other owners get evaluate messages."""
    s = driver.s
    at = eval_at(s.cfg)
    if at == "server":
        return evaluate_round(s, driver.client_states, rnd)
    fields = at_clients(driver, rnd, ridden or {})
    if at == "clients":  # the out-of-domain set is no owner's data: the coordinator judges it
        return {**fields, **ood_loss(s, driver.client_states)}
    server = evaluate_round(s, driver.client_states, rnd)
    bill = fields.pop("eval_down", {})
    return {**server, "client_eval": fields, "eval_down": bill}


def at_clients(driver, rnd: int, ridden: dict[int, dict]) -> dict:
    s = driver.s
    sets = sampled_sets(s, rnd)
    names = list(s.federation.eval_sets)
    rode = sorted(c for c in ridden if c in sets)
    replies: dict[int, dict | None] = {c: ridden[c] for c in rode}
    rest = [c for c in sets if c not in ridden]
    reached: list[int] = []
    blob, encode_s, raw = b"", 0.0, 0
    if rest:  # evaluate messages: the global adapter, judged as it is now
        adapter = s.method.final_adapter(driver.client_states)
        raw = fp32_bytes(adapter)
        t0 = time.perf_counter()
        blob = build_codec(eval_spec(s), s.adapter.layout).encode(adapter)
        encode_s = time.perf_counter() - t0
        transport = driver.transport
        evaluate = getattr(transport, "evaluate", None)
        if evaluate is None:  # clients in this process
            reached = transport.reachable(rest) if transport.remote else rest
            replies.update({c: score_blob(s, c, blob) for c in reached})
        else:
            reached = transport.reachable(rest)
            replies.update(evaluate(rnd, {c: blob for c in reached}))
    labels = s.federation.labels
    for c, r in replies.items():
        why = sums_problem(r, len(labels)) if r is not None else None
        if why is not None:
            driver.progress.log(f"round {rnd}: client {c}'s evaluation rejected ({why})")
    got = {c: r for c, r in replies.items() if r is not None and sums_problem(r, len(labels)) is None}
    missing = sorted(set(sets) - set(got))
    if missing:
        driver.progress.log(f"round {rnd}: no evaluation from clients {missing}: left out of the figure")
    sent = {str(c): len(blob) for c in reached}  # billed: every blob sent
    rode_field = {"eval_on_train": rode} if rode else {}  # judged on round rnd + 1's train messages, free
    if not got:
        return {"eval_down": sent, "eval_at": "clients", "eval_sets": [], **rode_field}
    share = s.cfg.server.max_client_weight if claims_counted(s) else 1.0
    fields = combine({names[c]: got[c] for c in sorted(got)}, share, labels)
    if "eval_capped" in fields:
        driver.progress.log(f"round {rnd}: " + cap_text(fields["eval_capped"], share, "evaluation weights capped"))
    fields["eval_down"] = sent
    fields.update(rode_field)
    if raw:
        fields["eval_raw_bytes"], fields["eval_encode_s"] = raw, encode_s
    return fields


def combine(replies: dict[str, dict], share: float = 1.0, labels: list[str] | tuple = ()) -> dict:
    """The count-weighted means of the owners' replies ({owner name: sums and counts}), each weight
    capped at `share` of the total; each owner's own figures beside them. A classify task (`labels`):
    the owners' confusion matrices summed, its figures from the sum (`classify`)."""
    names = list(replies)
    weights, capped = cap_weights({i: float(replies[n][TOKENS]) for i, n in enumerate(names)}, share)
    losses = {n: replies[n][LOSS_SUM] / max(replies[n][TOKENS], 1) for n in names}
    fields: dict = {
        "eval_loss": _weighted({i: losses[n] for i, n in enumerate(names)}, weights),
        "eval": losses,
        "eval_sets": names,
        "eval_at": "clients",
        "eval_tokens": {n: int(replies[n][TOKENS]) for n in names},
        "eval_examples": {n: int(replies[n][EXAMPLES]) for n in names},
    }
    all_capped = {names[i]: {"claimed": c, "counted": weights[i]} for i, c in capped.items()}
    per_owner: dict[str, dict] = {n: {} for n in names}
    means: dict[str, float] = {}
    for key, count in METRIC_COUNTS.items():
        have = [i for i, n in enumerate(names) if f"{key}_sum" in replies[n] and replies[n].get(count)]
        if not have:
            continue
        for i in have:
            r = replies[names[i]]
            per_owner[names[i]][key] = r[f"{key}_sum"] / r[count]
            per_owner[names[i]][count] = int(r[count])
        w, c = cap_weights({i: float(replies[names[i]][count]) for i in have}, share)
        means[key] = _weighted({i: per_owner[names[i]][key] for i in have}, w)
        all_capped.update({names[i]: {"claimed": v, "counted": w[i]} for i, v in c.items()})
    if labels:
        matrix = classify(replies, share, list(labels), per_owner, all_capped)
        if matrix is not None:
            means.update({k: v for k, v in matrix.items() if k not in ("labels", "confusion")})
            fields["eval_classify"] = {"labels": matrix["labels"], "confusion": matrix["confusion"]}
    if means:
        fields["eval_metrics"] = {n: m for n, m in per_owner.items() if m}
        fields["eval_means"] = means
    if all_capped:
        fields["eval_capped"] = all_capped
    return fields


def classify(replies: dict[str, dict], share: float, labels: list[str], per_owner: dict, capped: dict) -> dict | None:
    """The owners' confusion matrices summed, and acc, acc_se, macro_f1, chance, majority, classify_n
    of the sum (scoring/classify.py `pooled`, as the server-side evaluation pools its sets); each owner's
    own figures and matrix into `per_owner`. Each owner's items weigh its claim (`classify_n`), capped
    at `share` of the total: a capped owner's cells are scaled to its counted weight (into `capped`)."""
    from ..scoring.classify import dense, from_confusion, pooled, sparse

    names = [n for n in replies if replies[n].get(CLASSIFY_N)]
    if not names:
        return None
    cells = {n: sparse(dense(_cells(replies[n]), len(labels))) for n in names}  # in order, as the server's
    weights, over = cap_weights({i: float(replies[n][CLASSIFY_N]) for i, n in enumerate(names)}, share)
    per_set = {}
    for i, n in enumerate(names):
        per_owner[n].update({**from_confusion(dense(cells[n], len(labels))), "confusion": cells[n]})
        scale = weights[i] / replies[n][CLASSIFY_N] if i in over else 1
        per_set[n] = {"confusion": [[t, p, c * scale] for t, p, c in cells[n]]}
    capped.update({names[i]: {"claimed": c, "counted": weights[i]} for i, c in over.items()})
    return pooled(per_set, labels)


def _cells(reply: dict) -> list[list[int]]:
    return [[*cell, int(v)] for k, v in reply.items() if (cell := cell_of(k)) is not None]


def _weighted(values: dict[int, float], weights: dict[int, float]) -> float:
    total = sum(weights[i] for i in values)
    return sum(weights[i] * v for i, v in values.items()) / total if total else float("nan")


def bill(record: dict, fields: dict | None) -> None:
    """Puts evaluate messages' bytes (`eval_down` of `fields`) on the record's downlink bill."""
    if not fields or not fields.get("eval_down"):
        return
    sent = fields["eval_down"]
    record["bytes_down"] = record.get("bytes_down", 0) + sum(sent.values())
    per_client = record.setdefault("per_client", {})
    for c, n in sent.items():
        entry = per_client.setdefault(c, {"up": 0, "down": 0})
        entry["down"] = entry.get("down", 0) + n
    if fields is not record:  # the base model's evaluation, billed with round 1
        mine = record.setdefault("eval_down", {})
        for c, n in sent.items():
            mine[c] = mine.get(c, 0) + n
