"""Hand-checked and randomized tests of the LoRA math behind FedSRD, FlexLoRA and Fed-DARE."""

import math

import pytest
import torch

from fedsqueeze.errors import ConfigError
from fedsqueeze.strategies import lora_math as lm


# ---- sparsify ----------------------------------------------------------------------------------
def test_importance_scores_by_hand():
    d_a = torch.tensor([[1.0, -2.0], [3.0, 0.0]])  # r=2 x d_in=2
    trained_b = torch.tensor([[3.0, 0.0], [4.0, 1.0]])  # column norms 5, 1
    d_b = torch.tensor([[1.0, -1.0], [0.0, 2.0]])  # d_out=2 x r=2
    start_a = torch.tensor([[3.0, 4.0], [0.0, 2.0]])  # row norms 5, 2
    imp_a, imp_b = lm.importance_scores(d_a, d_b, trained_b, start_a)
    assert torch.equal(imp_a, torch.tensor([[5.0, 10.0], [3.0, 0.0]]))
    assert torch.equal(imp_b, torch.tensor([[5.0, 2.0], [0.0, 4.0]]))


def test_pearson_kurtosis_by_hand():
    # [1,2,3,4]: m2 = 1.25, m4 = 2.5625, kappa = 2.5625 / 1.5625 = 1.64
    assert lm.pearson_kurtosis(torch.tensor([1.0, 2.0, 3.0, 4.0])) == pytest.approx(1.64)
    # nine 0s and one 10: m2 = 9, m4 = 657, kappa = 657 / 81
    assert lm.pearson_kurtosis(torch.tensor([0.0] * 9 + [10.0])) == pytest.approx(657 / 81)
    assert lm.pearson_kurtosis(torch.zeros(5)) == 1.0  # no spread: no tail


def test_adaptive_ratio_by_hand():
    assert lm.adaptive_ratio(1.64, 0.85, 0.11, 0.1) == pytest.approx(0.85 + 0.1 * math.log(1.64))
    assert lm.adaptive_ratio(1.64, 0.85, 0.11, 0.1) == pytest.approx(0.8994696, abs=1e-6)
    assert lm.adaptive_ratio(657 / 81, 0.85, 0.11, 0.1) == pytest.approx(0.96)  # 0.209 capped at 0.11
    assert lm.adaptive_ratio(0.5, 0.85, 0.11, 0.1) == pytest.approx(0.85)  # kappa < 1 counts as 1


def test_quantile_matches_torch():
    x = torch.randn(37, 11, generator=torch.Generator().manual_seed(0))
    for q in (0.0, 0.3, 0.85, 0.96, 1.0):
        assert lm.quantile(x, q) == pytest.approx(torch.quantile(x.flatten(), q).item(), abs=1e-6)


def test_keep_mask_and_l1_rescale_by_hand():
    delta = torch.tensor([3.0, -1.0, 0.5, -0.5])
    score = torch.tensor([4.0, 3.0, 2.0, 1.0])
    keep = lm.keep_mask(score, 0.5)  # quantile 0.5 of 1..4 = 2.5
    assert keep.tolist() == [True, True, False, False]
    kept = torch.where(keep, delta, torch.zeros(()))
    # L1: 5 before, 4 kept -> x 1.25
    assert torch.allclose(lm.l1_rescale(kept, delta), torch.tensor([3.75, -1.25, 0.0, 0.0]))
    assert torch.equal(lm.l1_rescale(torch.zeros(3), torch.ones(3)), torch.zeros(3))


def test_random_drop_is_unbiased():
    delta = torch.linspace(-2.0, 2.0, 16)
    n = 4000
    mean = sum(lm.random_drop(delta, 0.9, lm.generator_for(7, i)) for i in range(n)) / n
    # per entry: var = delta^2 p / (1-p) = 9 delta^2, so the std of the mean is 3 |delta| / sqrt(n)
    assert torch.all((mean - delta).abs() <= 5 * 3 * delta.abs() / math.sqrt(n) + 1e-6)
    one = lm.random_drop(delta, 0.9, lm.generator_for(7, 0))
    assert set(one[one != 0].div(delta[one != 0]).round(decimals=4).tolist()) <= {10.0}


# ---- reconstruct -------------------------------------------------------------------------------
def _clients(m, d_out, d_in, r, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    bs = [torch.randn(d_out, r, generator=g, dtype=dtype) for _ in range(m)]
    as_ = [torch.randn(r, d_in, generator=g, dtype=dtype) for _ in range(m)]
    w = torch.rand(m, generator=g, dtype=torch.float64)
    return bs, as_, (w / w.sum()).tolist()


def _dense_truncated(w_full, r):
    u, s, vh = torch.linalg.svd(w_full, full_matrices=False)
    return u[:, :r] @ torch.diag(s[:r]) @ vh[:r]


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("m, d_out, d_in, r", [(4, 40, 30, 3), (3, 17, 50, 5), (2, 6, 9, 4)])
def test_factor_route_svd_equals_dense_svd(dtype, tol, m, d_out, d_in, r):
    bs, as_, w = _clients(m, d_out, d_in, r, dtype)
    left, right = lm.stacked_factors(bs, as_, w)
    dense = sum(wi * b.double() @ a.double() for wi, b, a in zip(w, bs, as_))
    assert torch.allclose((left @ right).double(), dense, rtol=0, atol=1e-5 * dense.abs().max())
    u, s, v = lm.truncated_svd_factored(left, right, r)
    assert u.shape == (d_out, r) and v.shape == (d_in, r) and s.shape == (r,)
    expected = _dense_truncated(dense, r)
    got = (u * s[None, :]) @ v.T
    rel = torch.linalg.norm(got.double() - expected) / torch.linalg.norm(expected)
    assert rel < tol
    b, a = lm.balanced_factors(u, s, v)
    assert torch.allclose(b @ a, got, atol=1e-5 * got.abs().max().item())


def test_factor_route_pads_when_rank_exceeds_inner_dimension():
    bs, as_, w = _clients(1, 3, 8, 2, torch.float64)  # k = 2 but d_out = 3, ask for rank 5
    u, s, v = lm.truncated_svd_factored(*lm.stacked_factors(bs, as_, w), rank=5)
    assert u.shape == (3, 5) and v.shape == (8, 5) and torch.all(s[2:] == 0)
    assert torch.allclose((u * s) @ v.T, w[0] * bs[0] @ as_[0])


# ---- decompose ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_pinv_projection_reproduces_delta_w_for_full_rank_factor(dtype, tol):
    g = torch.Generator().manual_seed(3)
    r, d = 6, 6
    left = torch.randn(d, 4, generator=g, dtype=dtype)
    right = torch.randn(4, d, generator=g, dtype=dtype)
    delta_w = left @ right
    b0 = torch.randn(d, r, generator=g, dtype=dtype)  # square, full rank: any dW is reachable
    a0 = torch.randn(r, d, generator=g, dtype=dtype)
    scale = delta_w.abs().max()
    assert torch.allclose(b0 @ lm.project_onto_a(b0, left, right), delta_w, atol=tol * scale * 10)
    assert torch.allclose(lm.project_onto_b(a0, left, right) @ a0, delta_w, atol=tol * scale * 10)


def test_pinv_projection_exact_in_the_factor_span():
    g = torch.Generator().manual_seed(4)
    d_out, d_in, r = 20, 15, 3
    b0 = torch.randn(d_out, r, generator=g, dtype=torch.float64)  # full column rank
    a0 = torch.randn(r, d_in, generator=g, dtype=torch.float64)  # full row rank
    x = torch.randn(r, d_in, generator=g, dtype=torch.float64)
    # dW = B0 X is reachable by moving A alone; dW = X' A0 by moving B alone
    assert torch.allclose(b0 @ lm.project_onto_a(b0, b0, x), b0 @ x, atol=1e-10)
    y = torch.randn(d_out, r, generator=g, dtype=torch.float64)
    assert torch.allclose(lm.project_onto_b(a0, y, a0) @ a0, y @ a0, atol=1e-10)


def test_delta_w_factored():
    g = torch.Generator().manual_seed(5)
    left, right = torch.randn(7, 4, generator=g), torch.randn(4, 5, generator=g)
    b0, a0 = torch.randn(7, 2, generator=g), torch.randn(2, 5, generator=g)
    l2, r2 = lm.delta_w_factored(left, right, b0, a0)
    assert torch.allclose(l2 @ r2, left @ right - b0 @ a0, atol=1e-5)


@pytest.mark.parametrize("shape", [(20, 4), (4, 15)])
def test_damped_pinv_is_tikhonov_and_bounds_the_gain(shape):
    g = torch.Generator().manual_seed(6)
    u, _ = torch.linalg.qr(torch.randn(shape[0], min(shape), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(shape[1], min(shape), generator=g, dtype=torch.float64))
    s = torch.tensor([2.0, 0.5, 1e-3, 1e-6], dtype=torch.float64)  # ill-conditioned, like a young B
    m = u @ torch.diag(s) @ v.T
    assert torch.allclose(lm.damped_pinv(m, 0.0), torch.linalg.pinv(m))
    d = 0.05
    lam = d * 2.0
    tikhonov = torch.linalg.solve(m.T @ m + lam**2 * torch.eye(shape[1], dtype=torch.float64), m.T)
    damped = lm.damped_pinv(m, d)
    assert torch.allclose(damped, tikhonov, atol=1e-10)
    assert torch.linalg.matrix_norm(damped, ord=2) <= 1 / (2 * lam) + 1e-12  # plain pinv: 1e6
    assert torch.count_nonzero(lm.damped_pinv(torch.zeros(shape), d)) == 0


def test_pinv_of_zero_b_gives_zero_a_step():
    """Why FedSRD starts with the B step: with peft's B0 = 0 an A step moves nothing."""
    left, right = torch.ones(5, 2), torch.ones(2, 4)
    assert torch.count_nonzero(lm.project_onto_a(torch.zeros(5, 3), left, right)) == 0


# ---- layout ------------------------------------------------------------------------------------
def test_lora_pairs():
    names = ["x.q.lora_A.weight", "x.q.lora_B.weight", "x.v.lora_A.weight", "x.v.lora_B.weight"]
    pairs = lm.lora_pairs(names)
    assert [(p.prefix, p.a, p.b) for p in pairs] == [("x.q", names[0], names[1]), ("x.v", names[2], names[3])]
    with pytest.raises(ConfigError):
        lm.lora_pairs(["x.q.lora_A.weight"])
    with pytest.raises(ConfigError):
        lm.lora_pairs(["x.q.lora_A.weight", "x.q.lora_B.weight", "x.q.lora_magnitude_vector"])


def test_normalized_weights():
    assert lm.normalized([0.2, 0.3]) == pytest.approx([0.4, 0.6])
    assert lm.normalized([0.0, 0.0]) == [0.0, 0.0]
