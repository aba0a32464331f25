"""The byte ledger: len() of every blob that crossed the wire, per round, client and direction."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

UP, DOWN = "up", "down"


@dataclass
class BlobRecord:
    round: int
    client: int
    direction: str
    wire_bytes: int
    raw_bytes: int
    rel_error: float
    """||x - x_hat|| / ||x||: x what the sender meant to send this round, x_hat what the receiver
    decoded. With error feedback x_hat also carries earlier rounds' residue, so it can exceed 1."""
    encode_s: float
    decode_s: float
    delivered: bool = True
    """False: a downlink blob whose node went away before answering (Flower cannot say whether it
    was pulled); listed as `undelivered`, apart from bytes_down."""


@dataclass
class Ledger:
    records: list[BlobRecord] = field(default_factory=list)

    def add(
        self,
        rnd: int,
        client: int,
        direction: str,
        wire_bytes: int,
        raw_bytes: int,
        rel_error: float,
        encode_s: float,
        decode_s: float,
    ) -> None:
        """raw_bytes: the fp32 size of what was encoded; wire_bytes: len() of the blob sent."""
        self.records.append(BlobRecord(rnd, client, direction, wire_bytes, raw_bytes, rel_error, encode_s, decode_s))

    def mark_undelivered(self, rnd: int, client: int) -> int:
        """Takes `client`'s round-`rnd` downlink off bytes_down; returns its bytes."""
        found = 0
        for r in self.records:
            if r.round == rnd and r.client == client and r.direction == DOWN and r.delivered:
                r.delivered = False
                found += r.wire_bytes
        return found

    def round_summary(self, rnd: int) -> dict:
        recs = [r for r in self.records if r.round == rnd]
        undelivered = [r for r in recs if not r.delivered]
        recs = [r for r in recs if r.delivered]
        out: dict = {"bytes_up": 0, "bytes_down": 0}
        per_dir: dict[str, list[BlobRecord]] = defaultdict(list)
        for r in recs:
            out[f"bytes_{r.direction}"] += r.wire_bytes
            per_dir[r.direction].append(r)
        for d, rs in per_dir.items():
            raw = sum(r.raw_bytes for r in rs)
            out[f"codec_{d}"] = {
                "blobs": len(rs),
                "raw_bytes": raw,
                "ratio": (sum(r.wire_bytes for r in rs) / raw) if raw else 0.0,
                "rel_error": sum(r.rel_error for r in rs) / len(rs),
                "encode_s": sum(r.encode_s for r in rs) / len(rs),
                "decode_s": sum(r.decode_s for r in rs) / len(rs),
            }
        out["per_client"] = {
            str(c): {d: sum(r.wire_bytes for r in recs if r.client == c and r.direction == d) for d in (UP, DOWN)}
            for c in sorted({r.client for r in recs})
        }
        if undelivered:
            out["undelivered"] = {str(r.client): r.wire_bytes for r in sorted(undelivered, key=lambda r: r.client)}
        return out

    def drop_round(self, rnd: int) -> None:
        self.records = [r for r in self.records if r.round != rnd]
