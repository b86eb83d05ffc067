"""A step with a non-finite gradient leaves the weights finite; a finite step is plain clipping."""

import torch

from mtilib.train.guards import clip_or_drop_gradients


def _net_with_grads(poison: float | None = None):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    net(torch.randn(5, 4)).square().sum().backward()
    if poison is not None:
        net[2].weight.grad[0, 0] = poison
    return net


def test_finite_gradients_are_clipped_exactly_as_plain_clipping():
    for max_norm in (0.0, 0.01, 100.0):
        ours, plain = _net_with_grads(), _net_with_grads()
        finite = clip_or_drop_gradients(ours.parameters(), max_norm)
        if max_norm > 0:
            torch.nn.utils.clip_grad_norm_(plain.parameters(), max_norm)
        assert bool(finite)
        for a, b in zip(ours.parameters(), plain.parameters()):
            assert torch.equal(a.grad, b.grad)


def test_a_nan_or_infinite_gradient_is_dropped_and_the_weights_stay_finite():
    for poison in (float("nan"), float("inf")):
        for max_norm in (0.0, 1.0):
            net = _net_with_grads(poison)
            finite = clip_or_drop_gradients(net.parameters(), max_norm)
            assert not bool(finite)
            assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in net.parameters())
            before = [p.detach().clone() for p in net.parameters()]
            torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.0).step()
            for p, b in zip(net.parameters(), before):  # a zero gradient moves nothing on a first step
                assert torch.isfinite(p).all() and torch.equal(p.detach(), b)


def test_without_gradients_there_is_nothing_to_guard():
    net = torch.nn.Linear(2, 2)
    assert clip_or_drop_gradients(net.parameters(), 1.0) is None

