"""EWC math against hand computations on a two-weight linear model.

Model: y_hat = w1 * x1 + w2 * x2 (no bias), loss_n = 0.5 * (y_n - y_hat_n)^2, so the
per-sample gradient is -(y_n - y_hat_n) * x_n. At w = (1, -1):

    sample 1: x = (1, 2), y = 0 -> y_hat = -1, residual 1  -> grad (-1, -2), squared (1, 4)
    sample 2: x = (3, 0), y = 1 -> y_hat =  3, residual -2 -> grad ( 6,  0), squared (36, 0)

Empirical Fisher (mean of squared per-sample grads) = (18.5, 2.0). The squared *batch-mean*
gradient would be ((-1+6)/2)^2, ((-2+0)/2)^2 = (6.25, 1.0): a different number, which is what
the tests guard against.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from consolidation.ewc import ewc_penalty, fisher_diagonal, online_fisher
from fastslow.errors import ConfigError

X = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
Y = torch.tensor([0.0, 1.0])
HAND_FISHER = [18.5, 2.0]


def _net(w1: float = 1.0, w2: float = -1.0) -> nn.Linear:
    net = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[w1, w2]]))
    return net


def _squared_loss(net: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return 0.5 * (y - net(x).squeeze(-1)) ** 2


@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_fisher_is_mean_of_squared_per_sample_gradients(method):
    fisher = fisher_diagonal(_net(), [(X, Y)], _squared_loss, method=method)
    assert fisher["weight"].shape == (1, 2)
    for got, want in zip(fisher["weight"].flatten().tolist(), HAND_FISHER):
        assert math.isclose(got, want, rel_tol=1e-6)


def test_fisher_does_not_depend_on_how_samples_are_batched():
    one_batch = fisher_diagonal(_net(), [(X, Y)], _squared_loss)["weight"]
    two_batches = fisher_diagonal(_net(), [(X[:1], Y[:1]), (X[1:], Y[1:])], _squared_loss)["weight"]
    assert torch.allclose(one_batch, two_batches)


def test_fisher_restores_mode_and_leaves_parameters_and_grads_alone():
    net = _net()
    net.train()
    before = net.weight.detach().clone()
    fisher_diagonal(net, [(X, Y)], _squared_loss)
    assert net.training
    net.eval()
    fisher_diagonal(net, [(X, Y)], _squared_loss, method="loop")
    assert not net.training
    assert torch.equal(net.weight, before)
    assert net.weight.grad is None


def test_fisher_of_no_samples_is_zero():
    fisher = fisher_diagonal(_net(), [], _squared_loss)
    assert fisher["weight"].tolist() == [[0.0, 0.0]]


def test_fisher_rejects_unknown_method():
    with pytest.raises(ConfigError, match="vmap"):
        fisher_diagonal(_net(), [(X, Y)], _squared_loss, method="exact")


def test_penalty_matches_hand_value():
    # lam/2 * (18.5 * (2-1)^2 + 2.0 * (1-(-1))^2) = 0.25 * 26.5 with lam = 0.5
    theta = {"weight": torch.tensor([[2.0, 1.0]], requires_grad=True)}
    anchors = {"weight": torch.tensor([[1.0, -1.0]])}
    fisher = {"weight": torch.tensor([HAND_FISHER])}
    penalty = ewc_penalty(theta, anchors, fisher, lam=0.5)
    assert math.isclose(penalty.item(), 6.625, rel_tol=1e-7)
    penalty.backward()  # d/dtheta = lam * F * (theta - theta*) = 0.5 * (18.5 * 1, 2.0 * 2)
    assert theta["weight"].grad.flatten().tolist() == [9.25, 2.0]


def test_penalty_is_zero_at_the_anchor_and_grows_quadratically():
    anchors = {"weight": torch.tensor([[1.0, -1.0]])}
    fisher = {"weight": torch.tensor([HAND_FISHER])}
    assert ewc_penalty(dict(anchors), anchors, fisher, lam=3.0).item() == 0.0
    step = lambda d: ewc_penalty({"weight": anchors["weight"] + d}, anchors, fisher, lam=3.0).item()
    assert math.isclose(step(2.0), 4 * step(1.0), rel_tol=1e-6)


def test_penalty_grows_with_the_fisher_of_each_moved_entry():
    anchors = {"weight": torch.tensor([[1.0, -1.0]])}
    moved = {"weight": torch.tensor([[2.0, 1.0]])}          # distances 1 and 2
    penalty = lambda f: ewc_penalty(moved, anchors, {"weight": torch.tensor([f])}, lam=2.0).item()
    assert penalty([0.0, 0.0]) == 0.0                       # no evidence that anything matters: free to move
    assert math.isclose(penalty([3.0, 0.0]), 3.0)           # lam/2 * 3 * 1^2
    assert math.isclose(penalty([3.0, 5.0]), 3.0 + 5.0 * 4)  # + lam/2 * 5 * 2^2
    assert math.isclose(penalty([6.0, 10.0]), 2 * penalty([3.0, 5.0]))   # linear in F


def test_penalty_ignores_rows_added_after_the_anchor():
    anchors = {"emb": torch.tensor([[1.0], [2.0]])}
    fisher = {"emb": torch.tensor([[4.0], [1.0]])}
    grown = {"emb": torch.tensor([[2.0], [2.0], [50.0]])}   # row 2 is new
    assert math.isclose(ewc_penalty(grown, anchors, fisher, lam=2.0).item(), 4.0)  # 1 * (4 * 1^2)


def test_penalty_skips_parameters_without_anchor_or_fisher():
    params = {"a": torch.tensor([5.0]), "b": torch.tensor([5.0])}
    assert ewc_penalty(params, {"a": torch.tensor([0.0])}, {"b": torch.tensor([1.0])}, lam=1.0).item() == 0.0


def test_online_fisher_decays_old_and_adds_new():
    old = {"weight": torch.tensor([HAND_FISHER])}
    new = {"weight": torch.tensor([[1.0, 1.0]])}
    out = online_fisher(old, new, gamma=0.9)
    assert out["weight"].flatten().tolist() == pytest.approx([0.9 * 18.5 + 1.0, 0.9 * 2.0 + 1.0])
    assert old["weight"].flatten().tolist() == HAND_FISHER   # inputs untouched


def test_online_fisher_first_run_and_grown_tables():
    new = {"emb": torch.ones(3, 2)}
    assert torch.equal(online_fisher(None, new, gamma=0.5)["emb"], new["emb"])
    old = {"emb": torch.full((2, 2), 4.0)}
    out = online_fisher(old, new, gamma=0.5)["emb"]
    assert out.tolist() == [[3.0, 3.0], [3.0, 3.0], [1.0, 1.0]]


def test_online_fisher_rejects_negative_gamma():
    with pytest.raises(ConfigError, match="gamma"):
        online_fisher(None, {"w": torch.ones(1)}, gamma=-0.1)


@pytest.mark.parametrize("negatives", [4096, 16])   # full softmax, then sampled candidates
def test_ranker_closed_form_fisher_equals_per_sample_gradients(negatives):
    import numpy as np

    from consolidation.ranker_fisher import ranker_fisher
    from models.slow import SlowRanker

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    ranker = SlowRanker(dim=6, history=4, epochs=2, negatives=negatives, batch_size=32)
    examples = ranker.build_examples([f"u{u}" for u in rng.integers(0, 20, 300)],
                                     [f"i{i}" for i in rng.integers(0, 60, 300)])
    ranker.fit(examples)
    examples.users[:5] = -1                                    # users the net never saw
    examples.history[5, :3] = examples.history[5, 0]           # an item repeated in a history
    closed = ranker_fisher(ranker, examples, 200, method="closed")
    generic = ranker_fisher(ranker, examples, 200, method="vmap")
    assert set(closed) == set(generic) == {name for name, _ in ranker.net.named_parameters()}
    for name in closed:
        assert torch.allclose(closed[name], generic[name], rtol=1e-4, atol=1e-9), name
        assert generic[name].abs().max() > 0, name             # every parameter has some Fisher


def test_ranker_anchors_leave_the_spare_rows_new_ids_land_in_free():
    from consolidation.train import ewc_anchors
    from models.slow import SlowRanker

    ranker = SlowRanker(dim=4, epochs=1)
    ranker.fit(ranker.build_examples(["a", "b"], ["x", "y"]))
    anchors = ewc_anchors(ranker)
    assert [anchors[n].shape[0] for n in ("user_emb.weight", "item_in.weight", "item_out.weight")] == [2, 3, 2]
    clone = ranker.clone()
    clone.build_examples(["c"], ["z"])                      # row 2 of tables with room for 1024
    assert clone.net.n_items == ranker.net.n_items
    params = dict(clone.net.named_parameters())
    fisher = {name: torch.ones_like(p) for name, p in params.items()}
    at_anchor = ewc_penalty(params, anchors, fisher, 1.0).item()
    with torch.no_grad():
        params["item_out.weight"][2] += 5.0
        params["user_emb.weight"][2] += 5.0
    assert math.isclose(ewc_penalty(params, anchors, fisher, 1.0).item(), at_anchor, abs_tol=1e-9)
    with torch.no_grad():
        params["item_out.weight"][1] += 1.0                # a known item still is anchored: 0.5 * 4 * 1^2
    assert math.isclose(ewc_penalty(params, anchors, fisher, 1.0).item(), at_anchor + 2.0, rel_tol=1e-5)
