"""Differential privacy's pieces: clipping, noise, the accountant, calibration, the composition
rules, and each method's private aggregate against its ordinary one."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsqueeze import config as config_mod
from fedsqueeze.checks import method_dp
from fedsqueeze.errors import ConfigError
from fedsqueeze.privacy.accountant import Accounting
from fedsqueeze.privacy.central import CentralNoise
from fedsqueeze.privacy.local import LocalNoise
from fedsqueeze.privacy.noise import clip, l2_norm
from fedsqueeze.privacy.plan import Plan
from fedsqueeze.strategies import ClientUpdate, MethodContext, build_method
from fedsqueeze.tensors import Layout


def _plan(mode="central", z=1.0, clip_norm=1.0, clients=4, k=4, seed=7) -> Plan:
    return Plan(mode, 1e-5, z, z, None, clip_norm, Accounting(mode, clients, k, 1e-5), 3, (), seed)


class _Mean:
    """A method whose private aggregate just keeps the noised mean it was handed."""

    def dp_contribution(self, update):
        return dict(update.tensors)

    def dp_aggregate(self, rnd, mean, updates):
        self.mean = mean
        return {}


tensors = st.dictionaries(
    st.sampled_from(["a", "b", "c"]),
    st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=30).map(torch.tensor),
    min_size=1,
)


# ---- clipping -----------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(tensors, st.floats(1e-3, 1e3))
def test_clip_bound_holds_for_every_update(update, bound):
    clipped, norm = clip(update, bound)
    assert l2_norm(clipped) <= bound * (1 + 1e-5)
    assert norm == pytest.approx(l2_norm(update))
    if norm <= bound:  # inside the ball nothing changes
        for k in update:
            assert torch.equal(clipped[k], update[k].float())


@settings(max_examples=60, deadline=None)
@given(tensors, st.floats(1e-3, 1e3))
def test_the_server_clips_each_contribution_before_the_mean(update, bound):
    # One client, noise negligible: the mean the method gets is that client's clipped contribution.
    noise = CentralNoise(_plan(z=1e-12, clip_norm=bound, clients=1, k=1))
    method = _Mean()
    noise.aggregate(method, 1, [ClientUpdate(0, update, 1)])
    assert l2_norm(method.mean) <= bound * (1 + 1e-5)


@settings(max_examples=60, deadline=None)
@given(tensors, st.floats(1e-3, 1e3))
def test_a_local_client_clips_its_update_before_the_method_sees_it(update, bound):
    start = {k: torch.ones_like(v) for k, v in update.items()}
    trained = {k: start[k] + v for k, v in update.items()}
    noised = LocalNoise(_plan("local", z=1e-12, clip_norm=bound), 0).noise_first(1, start, trained, lambda _: True)
    assert l2_norm({k: noised[k] - start[k] for k in noised}) <= bound * (1 + 1e-4) + 1e-6


# ---- noise --------------------------------------------------------------------------------------
def test_central_noise_has_the_configured_std():
    # 4 clients with zero updates: the mean is pure noise, std z * 2C / k per entry.
    plan = _plan(z=1.3, clip_norm=0.5, k=4)
    noise, method = CentralNoise(plan), _Mean()
    zero = {"w": torch.zeros(100_000)}
    noise.aggregate(method, 1, [ClientUpdate(c, zero, 1) for c in range(4)])
    measured = float(method.mean["w"].std())
    assert measured == pytest.approx(1.3 * 2 * 0.5 / 4, rel=0.05)
    assert abs(float(method.mean["w"].mean())) < 0.01 * measured * 10
    first = method.mean["w"].clone()
    noise.aggregate(method, 2, [ClientUpdate(c, zero, 1) for c in range(4)])  # fresh noise each round
    assert abs(float(torch.corrcoef(torch.stack([first, method.mean["w"]]))[0, 1])) < 0.02


def test_local_noise_has_the_configured_std_and_each_client_its_own():
    plan = _plan("local", z=0.8, clip_norm=2.0)
    start = {"w": torch.zeros(100_000)}
    draws = [LocalNoise(plan, c).noise_first(1, start, start, lambda _: True)["w"] for c in (0, 1)]
    for d in draws:
        assert float(d.std()) == pytest.approx(0.8 * 2 * 2.0, rel=0.05)
    assert abs(float(torch.corrcoef(torch.stack(draws))[0, 1])) < 0.02


def test_the_noise_is_not_derivable_from_the_config():
    plan = _plan(seed=None)
    a, b = CentralNoise(plan), CentralNoise(plan)  # two runs of the same config
    assert a.secret != b.secret
    seeded = _plan(seed=3)
    assert CentralNoise(seeded).secret == CentralNoise(seeded).secret  # privacy.noise_seed: tests only


def test_select_first_noises_only_the_kept_entries():
    upload = {"w": torch.tensor([0.0, 0.3, 0.0, -0.4])}
    out = LocalNoise(_plan("local", z=1.0), 0).select_first(1, upload)["w"]
    assert out[0] == 0 and out[2] == 0 and out[1] != 0.3 and out[3] != -0.4


# ---- the accountant -----------------------------------------------------------------------------
def test_accountant_matches_dp_accountings_published_gaussian_example():
    # dp_accounting's rdp_privacy_accountant_test.py, test_compute_epsilon_delta_gaussian: noise
    # multiplier 4.530877117 gives exactly (1, 1e-6)-DP for one Gaussian step (q = 1).
    eps = Accounting("central", clients=10, per_round=10, delta=1e-6).epsilon(4.530877117, 1)
    assert eps == pytest.approx(1.0, abs=1e-3)
    assert Accounting("local", 10, 10, 1e-6).epsilon(4.530877117, 1) == pytest.approx(eps)


def test_accountant_composes_rounds_and_amplifies_by_sampling():
    full, sampled = Accounting("central", 100, 100, 1e-5), Accounting("central", 100, 10, 1e-5)
    eps = [full.epsilon(1.0, t) for t in (1, 2, 5, 10)]
    assert eps == sorted(eps) and eps[0] > 0
    assert full.epsilon(1.0, 0) == 0.0
    assert sampled.epsilon(1.0, 10) < 0.5 * full.epsilon(1.0, 10)
    assert full.epsilon(2.0, 10) < full.epsilon(1.0, 10)
    # Local mode claims no amplification: the server knows whom it asked.
    assert Accounting("local", 100, 10, 1e-5).epsilon(1.0, 10) == pytest.approx(full.epsilon(1.0, 10))


@pytest.mark.parametrize(
    "target,rounds,clients,k", [(0.25, 3, 4, 4), (2.0, 10, 4, 4), (8.0, 3, 4, 4), (2.0, 20, 50, 5), (8.0, 5, 20, 2)]
)
def test_target_epsilon_ends_at_or_below_its_target(target, rounds, clients, k):
    acc = Accounting("central", clients, k, 1e-5)
    z = acc.calibrate(target, rounds)
    assert acc.epsilon(z, rounds) <= target
    assert acc.epsilon(z, rounds) >= 0.98 * target  # and not much noisier than needed
    assert acc.epsilon(z * 0.99, rounds) > acc.epsilon(z, rounds)


# ---- the composition rules ----------------------------------------------------------------------
def _cfg(*sets):
    """A config checked in full: config.load, then checks.check (the privacy rules need the method)."""
    from fedsqueeze.checks import check

    base = ["privacy.delta=1e-5", "privacy.noise_multiplier=1.0"]
    return check(config_mod.load(None, base + list(sets)))


def _unproven(cfg):
    """privacy/rules.py's reasons, told about the method by checks.method_dp as a run is."""
    from fedsqueeze.privacy.rules import unproven

    return unproven(cfg, method_dp(cfg))


def test_local_noise_before_a_topk_uplink_keeps_the_guarantee():
    # The example: top-k of an update that is already noised is post-processing.
    cfg = _cfg("privacy.mode=local", 'uplink.codec="topk(fraction=0.1) > quantize(bits=8) > zstd"')
    assert _unproven(cfg) == []
    assert _unproven(_cfg("privacy.mode=local", "method=gradualdiff")) == []
    assert _unproven(_cfg("privacy.mode=local", "method=fedsrd")) == []  # importance mask on noised values


def test_select_first_with_a_data_dependent_mask_is_refused_unless_allowed():
    sets = ["privacy.mode=local", "method=fedsrd", "privacy.order=select-first"]
    with pytest.raises(ConfigError, match="no formal guarantee.*select-first.*importance mask.*positions"):
        _cfg(*sets)
    cfg = _cfg(*sets, "privacy.allow_unproven=true")
    assert _unproven(cfg)
    # A dense upload has no positions to leak: the same order is fine for FedAvg.
    assert _unproven(_cfg("privacy.mode=local", "privacy.order=select-first")) == []


@pytest.mark.parametrize(
    "sets,match",
    [
        (["privacy.mode=central", "method=cg-fedllm"], "cannot run method 'cg-fedllm'.*autoencoder"),
        (["privacy.mode=central", "method=local"], "not federated"),
        (["privacy.mode=local", "method=centralized"], "not federated"),
        (["privacy.mode=local", "privacy.adaptive_clipping=true"], "adaptive_clipping.*central"),
        (["privacy.mode=central", "privacy.order=select-first"], "privacy.order"),
        (["privacy.mode=central", "privacy.target_epsilon=2"], "exactly one"),
        (["privacy.mode=central", "hybrid.quorum=0.5"], "no formal guarantee.*hybrid"),
        (["privacy.mode=local", "method=cg-fedllm", "params.tgap_snapshots=3"], "tgap_snapshots"),
    ],
)
def test_refusals_name_the_key_and_the_reason(sets, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(*sets)


def test_delta_is_required():
    from fedsqueeze.checks import check

    with pytest.raises(ConfigError, match="privacy.delta"):
        check(config_mod.load(None, ["privacy.mode=central", "privacy.noise_multiplier=1.0"]))


def test_adaptive_clipping_needs_count_noise_above_the_multiplier():
    with pytest.raises(ConfigError, match="clipped_count_stddev"):
        _cfg("privacy.mode=central", "privacy.adaptive_clipping=true")  # 4 / 20 < 1
    cfg = _cfg("privacy.mode=central", "privacy.adaptive_clipping=true", "privacy.clipped_count_stddev=2.0")
    plan = Plan.of(cfg, 4, method_dp(cfg))
    assert 1 / plan.z**2 == pytest.approx(1 / plan.z_sum**2 + 1 / 2.0**2)


def test_adaptive_clipping_moves_the_bound_toward_the_quantile():
    plan = Plan("central", 1e-5, 1.0, 1.0, 1e-9, 1.0, Accounting("central", 4, 4, 1e-5), 3, (), 1, 0.5, 0.2)
    noise, method = CentralNoise(plan), _Mean()
    big = [ClientUpdate(c, {"w": torch.full((4,), 10.0)}, 1) for c in range(4)]  # all clipped
    noise.aggregate(method, 1, big)
    assert noise.clip_norm == pytest.approx(math.exp(0.2 * 0.5))
    small = [ClientUpdate(c, {"w": torch.full((4,), 1e-3)}, 1) for c in range(4)]  # none clipped
    before = noise.clip_norm
    noise.aggregate(method, 2, small)
    assert noise.clip_norm == pytest.approx(before * math.exp(-0.2 * 0.5))


# ---- methods: the private aggregate is the ordinary one, computed from the mean -----------------
def _lora_ctx(seed=0):
    g = torch.Generator().manual_seed(seed)
    names = ["l.lora_A.weight", "l.lora_B.weight"]
    init = {names[0]: torch.randn(2, 6, generator=g), names[1]: torch.randn(5, 2, generator=g) * 0.1}
    layout = Layout(names, [tuple(init[n].shape) for n in names])
    return MethodContext(layout=layout, init_adapter=init, seed=0, weighting="uniform"), g


@pytest.mark.parametrize(
    "method,params",
    [
        ("fedavg", {}),
        ("fedavg", {"upload": "adapter"}),
        ("ffa-lora", {}),
        ("fed-dare", {}),
        ("gradualdiff", {}),
        ("flexlora", {}),
        ("fedsrd", {}),
        ("fedsrd", {"reconstruct": False}),
        ("fedsrd", {"decompose": False}),
        ("fedsrd-e", {}),
    ],
)
def test_private_aggregate_without_noise_or_clipping_equals_the_uniform_aggregate(method, params):
    ctx, g = _lora_ctx()
    plain, private = build_method(method, params, ctx), build_method(method, params, ctx)
    for rnd in (1, 2):
        updates = []
        for c in range(3):
            start = plain.adapter
            trained = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in start.items()}
            updates.append(ClientUpdate(c, plain.client_upload({}, start, trained), 10 + c))
        plain.aggregate(rnd, updates)
        CentralNoise(_plan(z=1e-12, clip_norm=1e6, clients=3, k=3)).aggregate(private, rnd, updates)
        for pair in [("l.lora_B.weight", "l.lora_A.weight")]:
            b, a = pair
            torch.testing.assert_close(
                private.adapter[b] @ private.adapter[a], plain.adapter[b] @ plain.adapter[a], rtol=1e-4, atol=1e-5
            )


def test_select_first_leaves_a_mask_seed_marker_alone():
    """Fed-DARE's upload carries its mask seed: neither clipped with the values nor noised."""
    from fedsqueeze.codecs.wire import Message

    upload = Message({"w": torch.tensor([3.0, 0.0, 4.0])}, mask_seed=12345)
    out = LocalNoise(_plan("local", z=1.0), 0).select_first(1, upload)
    assert out.mask_seed == 12345 and list(out) == ["w"]
    assert out["w"][1] == 0 and not torch.equal(out["w"], upload["w"])
