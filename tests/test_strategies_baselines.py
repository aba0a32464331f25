"""The FedSRD paper's baselines: FFA-LoRA, Fed-DARE, FlexLoRA, driven through the Method API."""

import math

import torch

from fedsqueeze.codecs import build_codec
from fedsqueeze.codecs.wire import message_tensors
from fedsqueeze.strategies import ClientUpdate, MethodContext, build_method
from fedsqueeze.strategies.base import ClientTurn
from fedsqueeze.tensors import Layout

PREFIXES = ("base_model.model.model.layers.0.self_attn.q_proj", "base_model.model.model.layers.1.self_attn.v_proj")
D_OUT, D_IN, R = 14, 9, 3


def make_ctx(seed=0, weighting="examples"):
    g = torch.Generator().manual_seed(seed)
    init = {}
    for prefix in PREFIXES:
        init[f"{prefix}.lora_A.weight"] = torch.randn(R, D_IN, generator=g) * 0.3
        init[f"{prefix}.lora_B.weight"] = torch.zeros(D_OUT, R)
    return MethodContext(layout=Layout.of(init), init_adapter=init, seed=seed, weighting=weighting)


def fake_training(method, start, client, rnd, scale=0.1):
    g = torch.Generator().manual_seed(1000 * client + rnd)
    return {k: v + scale * torch.randn(v.shape, generator=g) if method.trainable(k) else v for k, v in start.items()}


def one_round(method, rnd, clients, trained_out=None):
    updates = []
    for c in clients:
        msg = method.broadcast(rnd, c)
        start = method.client_receive({}, msg)
        trained = fake_training(method, start, c, rnd)
        if trained_out is not None:
            trained_out[c] = trained
        updates.append(ClientUpdate(c, method.client_upload({}, start, trained), num_examples=5 + c))
    method.aggregate(rnd, updates)
    return updates


def names(suffix, ctx):
    return [n for n in ctx.layout.names if n.endswith(suffix)]


# ---- FFA-LoRA ----------------------------------------------------------------------------------
def test_ffa_lora_never_sends_a():
    ctx = make_ctx()
    method = build_method("ffa-lora", {}, ctx)
    a_names, b_names = names("lora_A.weight", ctx), names("lora_B.weight", ctx)
    assert not any(method.trainable(a) for a in a_names) and all(method.trainable(b) for b in b_names)
    assert method.broadcast(1, 0) is None  # round 1: everyone has the seeded init
    for rnd in (1, 2, 3):
        if rnd > 1:
            assert sorted(method.broadcast(rnd, 0)) == sorted(b_names)
        updates = one_round(method, rnd, [0, 1, 2])
        assert all(sorted(u.tensors) == sorted(b_names) for u in updates)
    glob = method.global_adapter()
    assert all(torch.equal(glob[a], ctx.init_adapter[a]) for a in a_names)  # A frozen at its init
    assert all(torch.count_nonzero(glob[b]) > 0 for b in b_names)
    start = method.client_receive({}, method.broadcast(4, 1))
    assert list(start) == list(ctx.layout.names) and all(torch.equal(start[k], glob[k]) for k in start)


# ---- Fed-DARE ----------------------------------------------------------------------------------
def test_fed_dare_upload_is_sparse_rescaled_and_differs_per_client():
    ctx = make_ctx()
    method = build_method("fed-dare", {}, ctx)
    assert method.params.p == 0.9 and method.default_uplink == "seeded"
    start = ctx.init_adapter
    t0, t1 = fake_training(method, start, 0, 1), fake_training(method, start, 1, 1)
    up0, up1 = method.client_upload({}, start, t0), method.client_upload({}, start, t1)
    assert up0.keys() == set(ctx.layout.names) and up0.mask_seed is not None
    up0, up1 = dict(up0), dict(up1)
    total = sum(v.numel() for v in up0.values())
    kept = sum(int(v.count_nonzero()) for v in up0.values())
    assert 0.03 < kept / total < 0.2
    for k, v in up0.items():
        nz = v != 0
        assert torch.allclose(v[nz], 10 * (t0[k] - start[k])[nz], rtol=1e-5)
    masks0 = torch.cat([(v != 0).flatten() for v in up0.values()])
    masks1 = torch.cat([(v != 0).flatten() for v in up1.values()])
    assert not torch.equal(masks0, masks1)  # independent masks per client
    again = method.client_upload({}, start, t0)
    assert all(torch.equal(again[k], up0[k]) for k in up0)  # reproducible


def test_fed_dare_mask_comes_from_seed_round_and_client_and_its_positions_never_travel():
    ctx = make_ctx()
    method = build_method("fed-dare", {}, ctx)
    start = ctx.init_adapter
    trained = fake_training(method, start, 0, 1)

    def upload(rnd, client, tensors=trained):
        return method.client_upload({}, start, tensors, turn=ClientTurn(rnd, client))

    def mask(up):
        return torch.cat([(v != 0).flatten() for v in dict(up).values()])

    first = upload(3, 1)
    other = fake_training(method, start, 5, 7)  # different training, same (round, client): same mask
    assert torch.equal(mask(upload(3, 1, other)), mask(first))
    assert not torch.equal(mask(upload(4, 1)), mask(first)) and not torch.equal(mask(upload(3, 2)), mask(first))
    kept = sum(int(v.count_nonzero()) for v in dict(first).values())
    assert kept == sum(round(0.1 * v.numel()) for v in start.values())  # exactly round((1 - p) n) each
    seeded, sparse = build_codec("seeded", ctx.layout), build_codec("sparse", ctx.layout)
    blob = seeded.encode(message_tensors(first))
    decoded = seeded.decode(blob)
    assert all(torch.equal(decoded[k], first[k]) for k in first)
    assert len(sparse.encode(message_tensors(first))) - len(blob) >= kept * 3 // 8  # positions: >= 3 bits each


def test_fed_dare_is_unbiased_over_seeds():
    start = make_ctx().init_adapter
    n, delta = 1500, None
    total = None
    for seed in range(n):
        method = build_method("fed-dare", {}, make_ctx(seed=seed))
        trained = fake_training(method, start, 0, 1)
        up = method.client_upload({}, start, trained)
        delta = {k: trained[k] - start[k] for k in trained}
        total = up if total is None else {k: total[k] + up[k] for k in up}
    for k, d in delta.items():
        mean = total[k] / n
        assert torch.all((mean - d).abs() <= 5 * 3 * d.abs() / math.sqrt(n) + 1e-6)  # std = 3|d|/sqrt(n)


def test_fed_dare_server_averages_like_fedavg():
    ctx = make_ctx()
    dare, fedavg = build_method("fed-dare", {"p": 0.0}, ctx), build_method("fedavg", {}, ctx)
    one_round(dare, 1, [0, 1])
    one_round(fedavg, 1, [0, 1])
    assert all(torch.allclose(dare.global_adapter()[k], fedavg.global_adapter()[k]) for k in ctx.layout.names)


# ---- FlexLoRA ----------------------------------------------------------------------------------
def test_flexlora_reproduces_fedavg_of_products_when_rank_suffices():
    """With A shared (only B trained) W = (sum w_i B_i) A has rank r: the rank-r SVD loses nothing."""
    ctx = make_ctx()
    method = build_method("flexlora", {}, ctx)
    a_names = names("lora_A.weight", ctx)
    updates = []
    for c in range(3):
        start = method.client_receive({}, method.broadcast(1, c))
        trained = fake_training(method, start, c, 1)
        trained.update({a: start[a] for a in a_names})
        updates.append(ClientUpdate(c, method.client_upload({}, start, trained), num_examples=5 + c))
    w = method.weights(updates)
    method.aggregate(1, updates)
    glob = method.global_adapter()
    for prefix in PREFIXES:
        a, b = f"{prefix}.lora_A.weight", f"{prefix}.lora_B.weight"
        fedavg_product = sum(
            wi * (ctx.init_adapter[b] + u.tensors[b]) @ ctx.init_adapter[a] for wi, u in zip(w, updates)
        )
        assert torch.allclose(glob[b] @ glob[a], fedavg_product, atol=1e-5)
        assert glob[b].shape == (D_OUT, R) and glob[a].shape == (R, D_IN)


def test_flexlora_is_the_best_rank_r_fit_and_broadcasts_dense():
    ctx = make_ctx(weighting="uniform")
    method = build_method("flexlora", {}, ctx)
    trained = {}
    one_round(method, 1, [0, 1, 2], trained_out=trained)
    glob = method.global_adapter()
    for prefix in PREFIXES:
        a, b = f"{prefix}.lora_A.weight", f"{prefix}.lora_B.weight"
        w = sum(trained[c][b].double() @ trained[c][a].double() for c in range(3)) / 3
        u, s, vh = torch.linalg.svd(w)
        expected = u[:, :R] @ torch.diag(s[:R]) @ vh[:R]
        assert torch.allclose((glob[b] @ glob[a]).double(), expected, atol=1e-5)
        # balanced split: B^T B = A A^T = S_r
        assert torch.allclose(glob[b].T @ glob[b], glob[a] @ glob[a].T, atol=1e-5)
    msg = method.broadcast(2, 0)
    assert sorted(msg) == sorted(ctx.layout.names)
