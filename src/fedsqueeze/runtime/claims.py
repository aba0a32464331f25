"""Claims capped: where only a client knows how many examples it holds (per-owner data), the count
it claims is its weight, in aggregation and in client-side evaluation. No claim may carry more than
`server.max_client_weight` of a round's total weight: the largest claims are capped (water-filling:
the others keep their claims' proportions), and each cap is reported so that it can be logged.

With k clients a cap s below 1/k cannot be met; they then count alike. With no claim above the cap
the weights are the claims themselves, bit for bit."""

from __future__ import annotations


def cap_weights(claims: dict[int, float], share: float) -> tuple[dict[int, float], dict[int, float]]:
    """(weight per client, {client: its claim} for each client whose weight is not its claim)."""
    if share >= 1 or len(claims) <= 1:
        return dict(claims), {}
    if share * len(claims) < 1 - 1e-12:
        level = min(claims.values())
        weights = {c: float(level) for c in claims}
        return weights, {c: n for c, n in claims.items() if n != level}
    capped: set[int] = set()
    while True:
        free = {c: n for c, n in claims.items() if c not in capped}
        rest = 1.0 - share * len(capped)
        total = float(sum(free.values()))
        if total <= 0 or rest <= 0:
            break
        over = [c for c, n in free.items() if n / total * rest > share * (1 + 1e-12)]
        if not over:
            break
        capped.add(max(over, key=lambda c: (free[c], -c)))
    if not capped:
        return dict(claims), {}
    free_total = float(sum(n for c, n in claims.items() if c not in capped))
    rest = 1.0 - share * len(capped)
    level = share * free_total / rest if free_total > 0 else 1.0
    weights = {c: (level if c in capped else n) for c, n in claims.items()}
    return weights, {c: claims[c] for c in capped}


def cap_text(capped: dict, share: float, what: str = "weights capped") -> str:
    """The log line of a round's caps (`capped` as in the record: {client: {claimed, counted}})."""
    parts = ", ".join(f"client {c} claimed {v['claimed']:g}, counted {v['counted']:.6g}" for c, v in capped.items())
    return f"{what}: {parts} (server.max_client_weight = {share:g} of the round's total)"


def claims_counted(session) -> bool:
    """Whether example counts are the clients' claims (per-owner data: the server holds none)."""
    from ..data.owners import is_owners

    return is_owners(session.cfg.data.source)


def weight_of(session, client: int, claimed: int) -> float | int:
    """An admitted upload's weight before capping: its claim, or what the server knows it holds."""
    if claims_counted(session):
        return float(claimed)
    return session.federation.clients[client].num_examples


def cap_updates(session, updates: list) -> tuple[list, dict]:
    """The round's updates with capped weights, and `capped` for the record ({} when none)."""
    if not claims_counted(session) or not updates:
        return updates, {}
    share = session.cfg.server.max_client_weight
    weights, capped = cap_weights({u.client: u.num_examples for u in updates}, share)
    if not capped:
        return updates, {}
    from dataclasses import replace

    out = [replace(u, num_examples=weights[u.client]) for u in updates]
    return out, {str(c): {"claimed": n, "counted": weights[c]} for c, n in sorted(capped.items())}
