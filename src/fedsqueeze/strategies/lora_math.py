"""LoRA math shared by FedSRD, FlexLoRA, Fed-DARE and FFA-LoRA: small pure functions on tensors.

Notation per LoRA layer: B in R^{d_out x r}, A in R^{r x d_in}, the layer's update is B @ A (peft's
constant scaling alpha/r multiplies B @ A and changes nothing here). Everything is computed in fp32
(or the caller's dtype when that is wider) and never forms a d_out x d_in matrix: a product that is
needed is carried as a factored pair (L, R) with W = L @ R.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

from ..codecs.seeded import seeded_positions
from ..errors import ConfigError

A_SUFFIX = ".lora_A.weight"
B_SUFFIX = ".lora_B.weight"
R_SUFFIX = ".lora_R.weight"
"""An r x r core between A and B (Fed-SB's R); models/adapter.py builds it under this name."""


def wide(t: torch.Tensor) -> torch.Tensor:
    """t in fp32, or as is when it is already wider (fp64 in tests)."""
    return t if t.dtype == torch.float64 else t.float()


# ---- adapter layout ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LoraPair:
    prefix: str
    a: str
    b: str


def lora_pairs(names) -> list[LoraPair]:
    """Pairs `<prefix>.lora_A.weight` with `<prefix>.lora_B.weight`, in the order the A names appear.

    Raises ConfigError for a name that is neither, or an A without its B (and vice versa): the
    factor methods need every tensor to be one half of a pair."""
    names = list(names)
    present = set(names)
    pairs: list[LoraPair] = []
    paired: set[str] = set()
    for name in names:
        if name.endswith(A_SUFFIX):
            prefix = name[: -len(A_SUFFIX)]
            b = prefix + B_SUFFIX
            if b not in present:
                raise ConfigError(f"LoRA tensor {name!r} has no matching {b!r}")
            pairs.append(LoraPair(prefix, name, b))
            paired.update((name, b))
    unpaired = [n for n in names if n not in paired]
    if unpaired:
        raise ConfigError(f"this method needs an adapter made only of lora_A/lora_B pairs; unpaired: {unpaired[:3]}")
    return pairs


# ---- deterministic randomness -----------------------------------------------------------------
def generator_for(*keys: int | str) -> torch.Generator:
    """A CPU generator seeded by a stable hash of `keys` (e.g. seed, round, purpose)."""
    digest = hashlib.sha256(repr(keys).encode()).digest()
    g = torch.Generator()
    g.manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return g


def content_seed(seed: int, tensors: dict[str, torch.Tensor]) -> int:
    """A seed derived from `seed` and the bytes of `tensors`.

    Client hooks are not told their client id or the round; a client's trained adapter differs from
    every other client's and round's, so hashing it gives a per-client, per-round seed that is still
    reproducible (same inputs, same masks; a resumed run draws the same masks)."""
    h = hashlib.sha256(str(seed).encode())
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return int.from_bytes(h.digest()[:8], "little") >> 1


# ---- upload sparsification (FedSRD steps 2-4) -------------------------------------------------
def importance_scores(
    delta_a: torch.Tensor, delta_b: torch.Tensor, trained_b: torch.Tensor, start_a: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """I_A[u, j] = |dA[u, j]| * ||B'[:, u]||_2   and   I_B[i, v] = |dB[i, v]| * ||A0[v, :]||_2.

    Row u of A only acts through column u of B (and column v of B through row v of A), so an entry's
    effect on B @ A is its change times the norm of the partner vector: the trained B' for A, the
    round-start A0 for B."""
    col_norms_b = torch.linalg.vector_norm(trained_b.float(), dim=0)  # (r,)
    row_norms_a = torch.linalg.vector_norm(start_a.float(), dim=1)  # (r,)
    return delta_a.float().abs() * col_norms_b[:, None], delta_b.float().abs() * row_norms_a[None, :]


def pearson_kurtosis(x: torch.Tensor) -> float:
    """kappa = m4 / m2^2 with central population moments m_k = mean((x - mean(x))^k).

    Pearson's (not excess) kurtosis, as scipy.stats.kurtosis(fisher=False): 3 for a Gaussian, 1.8 for
    a uniform. A constant input (m2 = 0) has no tails: we return 1, the smallest possible value."""
    x = x.detach().double().flatten()
    centered = x - x.mean()
    m2 = centered.pow(2).mean().item()
    if m2 <= 0.0:
        return 1.0
    return centered.pow(4).mean().item() / (m2 * m2)


def adaptive_ratio(kurtosis: float, base: float, cap: float, coef: float) -> float:
    """rho = base + min(cap, coef * ln(max(kappa, 1))), clipped to [0, 1].

    Heavier-tailed importance (larger kappa) means fewer entries carry the update: drop more."""
    rho = base + min(cap, coef * math.log(max(kurtosis, 1.0)))
    return min(max(rho, 0.0), 1.0)


def quantile(x: torch.Tensor, q: float) -> float:
    """Linear-interpolation quantile of all entries (torch.quantile's default), without its size limit."""
    flat = wide(x.detach().flatten())
    n = flat.numel()
    pos = q * (n - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    v_lo = torch.kthvalue(flat, lo + 1).values.item()
    v_hi = v_lo if hi == lo else torch.kthvalue(flat, hi + 1).values.item()
    return v_lo + (pos - lo) * (v_hi - v_lo)


def keep_mask(score: torch.Tensor, ratio: float) -> torch.Tensor:
    """True where score >= quantile(score, ratio): zeroes (about) a `ratio` fraction, the lowest scores."""
    if ratio <= 0.0 or score.numel() == 0:
        return torch.ones_like(score, dtype=torch.bool)
    return score >= quantile(score, ratio)


def l1_rescale(kept: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """kept * ||original||_1 / ||kept||_1: the sparse update moves the weights as far (in L1) as the
    dense one. Unchanged when nothing was kept."""
    kept_l1 = kept.abs().sum()
    if kept_l1.item() <= 0.0:
        return kept
    return kept * (original.abs().sum() / kept_l1).to(kept.dtype)


def seeded_drop(t: torch.Tensor, p: float, seed: int, name: str, rescale: bool = True) -> torch.Tensor:
    """Keep k = round((1 - p) n) entries (at least one), the seeded_positions of (seed, name), and zero
    the rest; survivors times 1/(1-p) when `rescale`. A uniformly random k-subset, so E[output] = t
    up to k/n vs 1 - p; both ends redraw the mask from (seed, name), so its positions never travel."""
    if p <= 0.0:
        return t.clone()
    n = t.numel()
    k = min(n, max(1, int((1.0 - p) * n + 0.5))) if n else 0
    keep = torch.zeros(n, dtype=torch.bool)
    keep[torch.from_numpy(seeded_positions(seed, name, n, k))] = True
    out = torch.where(keep.view(t.shape).to(t.device), t, torch.zeros((), dtype=t.dtype, device=t.device))
    if rescale:
        out = out / (1.0 - p)
    return out


def mask_seed(*keys: int | str) -> int:
    """A 64-bit mask seed from a stable hash of `keys` (e.g. seed, round, purpose)."""
    digest = hashlib.sha256(repr(keys).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def random_drop(t: torch.Tensor, p: float, generator: torch.Generator, rescale: bool = True) -> torch.Tensor:
    """Zero each entry independently with probability p (Bernoulli); survivors times 1/(1-p) when
    `rescale`, so E[output] = t (DARE's drop-and-rescale)."""
    if p <= 0.0:
        return t.clone()
    keep = torch.rand(t.shape, generator=generator) >= p
    out = torch.where(keep, t, torch.zeros((), dtype=t.dtype))
    if rescale and p < 1.0:
        out = out / (1.0 - p)
    return out


# ---- reconstruct: products of factors, kept factored ------------------------------------------
def normalized(weights: list[float]) -> list[float]:
    """Weights scaled to sum to 1. Methods that average adapters or products (not deltas) need it:
    the runtime's staleness discount may leave the round's weights summing to less than 1."""
    total = sum(weights)
    return [w / total for w in weights] if total > 0 else weights


def stacked_factors(
    bs: list[torch.Tensor], as_: list[torch.Tensor], weights: list[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, R) with L @ R = sum_i w_i B_i A_i:  L = [w_1 B_1, ..., w_m B_m] (d_out x m r),
    R = [A_1; ...; A_m] (m r x d_in)."""
    left = torch.cat([w * wide(b) for w, b in zip(weights, bs)], dim=1)
    right = torch.cat([wide(a) for a in as_], dim=0)
    return left, right


def truncated_svd_factored(
    left: torch.Tensor, right: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank-`rank` truncated SVD of W = L @ R without forming W: returns (U_r, S_r, V_r) with
    U_r diag(S_r) V_r^T the best rank-`rank` approximation of W.

    With L = Q_L R_L and R^T = Q_R R_R (reduced QR), W = Q_L (R_L R_R^T) Q_R^T; the core R_L R_R^T is
    only k x k (k = inner dimension, m r), so its SVD U_c S V_c^T gives W's: U = Q_L U_c, V = Q_R V_c.
    Cost O((d_out + d_in) k^2 + k^3) instead of O(d_out d_in min(d_out, d_in)).
    Columns beyond W's possible rank are zero-padded so shapes are always (d_out x rank) etc."""
    q_l, r_l = torch.linalg.qr(left, mode="reduced")
    q_r, r_r = torch.linalg.qr(right.T, mode="reduced")
    u_c, s, vh_c = torch.linalg.svd(r_l @ r_r.T, full_matrices=False)
    k = min(rank, s.numel())
    u = q_l @ u_c[:, :k]
    v = q_r @ vh_c[:k].T
    s = s[:k]
    if k < rank:  # W cannot have more than k non-zero singular values
        u = torch.cat([u, u.new_zeros(u.shape[0], rank - k)], dim=1)
        v = torch.cat([v, v.new_zeros(v.shape[0], rank - k)], dim=1)
        s = torch.cat([s, s.new_zeros(rank - k)])
    return u, s, v


def balanced_factors(u: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """B = U_r S_r^(1/2), A = S_r^(1/2) V_r^T (FlexLoRA's split of a truncated SVD)."""
    root = s.clamp_min(0).sqrt()
    return u * root[None, :], root[:, None] * v.T


# ---- central DP: a layer's full-rank change, and a dense one added back -----------------------
PRODUCT_SUFFIX = ".lora_BA"
"""Name of a layer's dense B A - B0 A0 in a DP contribution (never an adapter tensor)."""


def product_delta(b0: torch.Tensor, a0: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """B A - B0 A0, dense (d_out x d_in): what one client changed in the layer, for clipping."""
    return wide(b) @ wide(a) - wide(b0) @ wide(a0)


def plus_dense(b0: torch.Tensor, a0: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, R) with L @ R = B0 A0 + dense: L = [B0, D], R = [A0; I]."""
    eye = torch.eye(dense.shape[1], dtype=wide(dense).dtype)
    return torch.cat([wide(b0), wide(dense)], dim=1), torch.cat([wide(a0), eye], dim=0)


# ---- decompose: project a factored update onto one factor (FedSRD step 8) ----------------------
def delta_w_factored(
    left: torch.Tensor, right: torch.Tensor, b0: torch.Tensor, a0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """dW = L R - B0 A0 = [L, -B0] @ [R; A0], still factored."""
    return torch.cat([left, -wide(b0)], dim=1), torch.cat([right, wide(a0)], dim=0)


def damped_pinv(m: torch.Tensor, damping: float = 0.0) -> torch.Tensor:
    """pinv(M) (damping 0), or the Tikhonov-damped (M^T M + lam^2 I)^-1 M^T with lam = damping * s_max:
    each singular value s becomes s / (s^2 + lam^2) instead of 1 / s, so no direction is amplified
    more than 1 / (2 lam). In fp32 (or the input's wider dtype)."""
    m = wide(m)
    if damping <= 0.0:
        return torch.linalg.pinv(m)
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    lam = damping * s.max()
    gain = torch.where(s > 0, s / (s * s + lam * lam), torch.zeros((), dtype=s.dtype))
    return vh.T @ (gain[:, None] * u.T)


def project_onto_a(b0: torch.Tensor, left: torch.Tensor, right: torch.Tensor, damping: float = 0.0) -> torch.Tensor:
    """dA = pinv(B0) @ dW with dW = L @ R, computed as (pinv(B0) @ L) @ R (r x d_in).

    B0 (B0 + dA) = B0 A0 + P_B0 dW: the best change of A alone, in least squares. pinv in fp32."""
    return (damped_pinv(b0, damping) @ left) @ right


def project_onto_b(a0: torch.Tensor, left: torch.Tensor, right: torch.Tensor, damping: float = 0.0) -> torch.Tensor:
    """dB = dW @ pinv(A0) with dW = L @ R, computed as L @ (R @ pinv(A0)) (d_out x r). pinv in fp32."""
    return left @ (right @ damped_pinv(a0, damping))
