"""GradualDiff-Fed's server bookkeeping: deltas both ways, per-client copies, catch-up, full resend."""

import torch

from fedsqueeze.codecs.wire import Message
from fedsqueeze.strategies import ClientUpdate, build_method
from test_strategies_baselines import fake_training, make_ctx


def _round(method, rnd, clients, examples=None, lossy=None):
    """One round: each client decodes its message, trains, uploads its delta; returns the deltas."""
    updates, deltas = [], {}
    for c in clients:
        msg = method.broadcast(rnd, c) or Message()
        received = Message(lossy(msg)) if lossy and msg else msg
        if msg:
            method.delivered(rnd, c, received)
        state = _round.states.setdefault(c, {})
        start = method.client_receive(state, received)
        trained = fake_training(method, start, c, rnd)
        deltas[c] = method.client_upload(state, start, trained)
        updates.append(ClientUpdate(c, deltas[c], num_examples=(examples or {}).get(c, 1)))
    method.aggregate(rnd, updates)
    return deltas


def _fresh(params=None):
    _round.states = {}
    ctx = make_ctx()
    return ctx, build_method("gradualdiff", params or {}, ctx)


def test_aggregate_adds_the_example_weighted_mean_delta():
    ctx, method = _fresh()
    deltas = _round(method, 1, [0, 1], examples={0: 1, 1: 3})
    for k, init in ctx.init_adapter.items():
        expected = init + 0.25 * deltas[0][k] + 0.75 * deltas[1][k]
        assert torch.allclose(method.global_adapter()[k], expected, atol=1e-6)


def test_a_client_that_missed_rounds_gets_the_sum_of_what_it_missed():
    ctx, method = _fresh({"full_above": 1.0})
    assert method.broadcast(1, 2) == {}  # everyone starts from the seeded init: nothing to send
    _round(method, 1, [0, 1])
    after_1 = {k: v.clone() for k, v in method.global_adapter().items()}
    _round(method, 2, [0, 1])
    # client 0 was there in round 2: its message is round 2's aggregated delta only
    msg0 = method.broadcast(3, 0)
    for k in msg0:
        assert torch.allclose(msg0[k], method.global_adapter()[k] - after_1[k], atol=1e-6)
    # client 2 never came: one message, the sum of both rounds' deltas, and it lands on the global adapter
    msg2 = method.broadcast(3, 2)
    assert not msg2.whole
    held = method.client_receive({}, msg2)
    for k, v in method.global_adapter().items():
        assert torch.allclose(held[k], v, atol=1e-6)
        assert torch.allclose(msg2[k], v - ctx.init_adapter[k], atol=1e-6)


def test_the_whole_adapter_goes_when_the_difference_is_dense():
    _, method = _fresh()  # fake training moves every entry: the difference is 100% dense
    _round(method, 1, [0, 1])
    msg = method.broadcast(2, 3)
    assert msg.whole
    held = method.client_receive({"global/x": torch.zeros(1)}, msg)
    assert all(torch.equal(held[k], v) for k, v in method.global_adapter().items())


def test_what_a_lossy_downlink_lost_is_in_the_next_difference():
    _, method = _fresh({"full_above": 1.0})
    _round(method, 1, [0, 1])
    msg = method.broadcast(2, 0)
    received = Message({k: torch.round(v * 100) / 100 for k, v in msg.items()})  # a coarse quantizer
    method.delivered(2, 0, received)
    state: dict = {}
    held = method.client_receive(state, received)
    fix = method.broadcast(3, 0)  # nothing aggregated since: the message is exactly what was lost
    for k in msg:
        assert torch.allclose(fix[k], msg[k] - received[k], atol=1e-7)
    held = method.client_receive(state, fix)
    for k, v in method.global_adapter().items():
        assert torch.allclose(held[k], v, atol=1e-6)


def test_over_a_lossless_link_a_clients_copy_is_a_round_number_and_old_ones_get_the_whole_adapter():
    _, method = _fresh({"full_above": 1.0, "view_horizon": 2})
    _round(method, 1, [0, 1])  # round 1 sends nothing: everyone holds the seeded init
    sent_2 = {k: v.clone() for k, v in method.global_adapter().items()}  # what round 2 brings its clients
    _round(method, 2, [0, 1, 2])
    _round(method, 3, [0, 1])
    assert method.views == {}  # no adapter-sized copy per client
    assert method.synced == {0: 3, 1: 3, 2: 2} and sorted(method.snapshots) == [2, 3]
    # Within the horizon: the difference against the snapshot it holds.
    msg = method.broadcast(4, 2)
    assert not msg.whole
    for k, v in method.global_adapter().items():
        assert torch.allclose(msg[k], v - sent_2[k], atol=1e-6)
    _round(method, 4, [0, 1])
    assert method.synced[2] == 2 and sorted(method.snapshots) == [4]  # round 2 is past the horizon
    msg = method.broadcast(5, 2)
    assert msg.whole
    held = method.client_receive(_round.states[2], msg)
    assert all(torch.equal(held[k], v) for k, v in method.global_adapter().items())


def test_a_copy_a_lossy_link_made_differ_is_kept_whole_and_leaves_through_detach():
    _, method = _fresh({"full_above": 1.0})
    _round(method, 1, [0, 1])
    msg = method.broadcast(2, 0)
    received = Message({k: torch.round(v * 100) / 100 for k, v in msg.items()})
    method.delivered(2, 0, received)
    assert 0 in method.views and 0 not in method.synced
    kept = method.detach_client(0)
    assert method.views == {} and set(kept) == set(method.global_adapter())
    method.attach_client(0, kept)
    fix = method.broadcast(3, 0)
    for k in msg:
        assert torch.allclose(fix[k], msg[k] - received[k], atol=1e-7)
