"""Routing measures and the share constraints of the sparsity loss, on hand-made gates."""

from __future__ import annotations

import pytest
import torch

from spadec.dllm.routing import routing_measures
from spadec.dllm.train import activation_loss
from spadec.share_targets import dynamic_layer_rate

# 4 layers, layer 0 static; 10 tokens.
STATIC_PRUNING = torch.tensor([[1, 1, 0, 1]] * 10)  # every token skips layer 2


def test_static_pruning_has_no_token_dependent_layer():
    m = routing_measures(STATIC_PRUNING, range(1, 4))
    assert m["layer_execution_rate"] == [1.0, 1.0, 0.0, 1.0]
    assert m["token_dependent_layers"] == 0 and m["token_dependent_fraction"] == 0.0
    assert m["modal_set_disagreement"] == 0.0 and m["modal_set_distance"] == 0.0
    assert m["distinct_layer_sets"] == 1
    assert m["executed_share"] == 0.75 and m["token_share_std"] == 0.0


def test_token_dependent_routing_by_hand():
    gates = STATIC_PRUNING.clone()
    gates[:3, 2] = 1  # 3 tokens run layer 2 too (rate 0.3)
    gates[3, 3] = 0  # one token skips layer 3 (rate 0.9: still inside the band)
    gates[4, 1] = 0  # one token skips layer 1 (rate 0.9)
    m = routing_measures(gates, [1, 2, 3])
    assert m["layer_execution_rate"] == [1.0, 0.9, 0.3, 0.9]
    assert m["token_dependent_layers"] == 3 and m["token_dependent_fraction"] == 1.0
    # the modal set {1, 3} is used by 5 tokens; 5 differ, each in one layer
    assert m["modal_set_disagreement"] == 0.5 and m["modal_set_distance"] == 0.5
    assert m["distinct_layer_sets"] == 4
    shares = torch.tensor([1.0] * 3 + [0.5] * 2 + [0.75] * 5)
    assert m["token_share_std"] == pytest.approx(shares.std(correction=0).item(), abs=1e-4)
    assert m["token_share_p10"] == 0.5 and m["token_share_p90"] == 1.0


def test_rates_at_the_band_edges_count_and_outside_do_not():
    gates = torch.ones(20, 3)
    gates[:2, 1] = 0  # rate 0.9: counts
    gates[:19, 2] = 0  # rate 0.05: pruned for nearly every token
    assert routing_measures(gates, [1, 2])["token_dependent_layers"] == 1


def test_empty_gates_are_refused():
    with pytest.raises(ValueError, match="tokens > 0"):
        routing_measures(torch.zeros(0, 4), [1, 2])


# Two tokens (no reserved position), 4 layers with layer 0 static, target share 0.75:
# token 0 runs every layer (share 1.0), token 1 runs layer 0 and 1 (share 0.5).
GATES = torch.tensor([[[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]]])
MASK = torch.ones(1, 2, dtype=torch.bool)


def test_token_constraint_pins_every_token():
    loss, share = activation_loss(GATES, MASK, 0.75, reserve=0, constraint="token")
    assert share.item() == pytest.approx(0.75)
    assert loss.item() == pytest.approx(0.25)  # both tokens 0.25 away


def test_batch_constraint_lets_tokens_differ():
    loss, share = activation_loss(GATES, MASK, 0.75, reserve=0, constraint="batch")
    assert share.item() == pytest.approx(0.75) and loss.item() == pytest.approx(0.0)


def test_layer_constraint_holds_each_dynamic_layer_at_its_rate():
    # dynamic rate for 0.75 overall with one static layer of four: (3 - 1) / 3 = 2/3
    loss, _ = activation_loss(GATES, MASK, 0.75, 0, constraint="layer", dynamic_start=1)
    rates = torch.tensor([1.0, 0.5, 0.5])
    assert loss.item() == pytest.approx((rates - 2 / 3).abs().mean().item())
    pruned = torch.tensor([[[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0]]])  # layer 3 pruned
    pruned_loss, share = activation_loss(pruned, MASK, 0.75, 0, "layer", dynamic_start=1)
    assert share.item() == pytest.approx(0.75)  # on target overall ...
    assert pruned_loss.item() > loss.item()  # ... but a layer nobody runs is penalised
    assert activation_loss(pruned, MASK, 0.75, 0, "token")[0].item() == pytest.approx(0.0)


def test_unknown_constraint_is_named():
    with pytest.raises(ValueError, match="'sequence' is not one of"):
        activation_loss(GATES, MASK, 0.75, 0, constraint="sequence")


def test_a_share_no_dynamic_rate_can_meet_is_refused():
    assert dynamic_layer_rate(0.75, 8, 2) == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="target_share 0.2 cannot be met with 2 static layers"):
        dynamic_layer_rate(0.2, 8, 2)


def test_noise_free_training_decisions_are_the_inference_ones_with_a_gradient():
    from spadec.dllm.router import gumbel_decision, hard_decision

    torch.manual_seed(0)
    logits = torch.randn(64, 2, requires_grad=True)
    w = gumbel_decision(logits, noise=0.0)
    assert torch.equal(w.detach(), hard_decision(logits.detach()))
    w.sum().backward()  # straight-through: the soft decision's gradient
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # with the published noise, unsure routers (p = 2/3 for every token) are random
    unsure = torch.tensor([[0.0, float(torch.log(torch.tensor(2.0)))]]).expand(4000, 2)
    rate = gumbel_decision(unsure).mean().item()
    assert rate == pytest.approx(2 / 3, abs=0.03)
    assert hard_decision(unsure).mean().item() == 1.0  # ... and all execute at inference


def test_router_noise_schedule():
    from spadec.dllm.train import router_noise

    assert [router_noise(s, 5, 1.0, 1.0) for s in range(5)] == [1.0] * 5  # published
    assert [router_noise(s, 5, 1.0, 0.0) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert [router_noise(s, 5, 0.0, 0.0) for s in range(5)] == [0.0] * 5


def test_layer_band_penalises_only_layers_run_by_none_or_all():
    # one static layer, three dynamic ones run at rates 1.0, 0.5 and 0.0 by two tokens
    gates = torch.tensor([[[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]]])
    plain, _ = activation_loss(gates, MASK, 0.625, 0, "batch", dynamic_start=1)
    banded, _ = activation_loss(
        gates, MASK, 0.625, 0, "batch", dynamic_start=1, layer_band=(0.1, 0.9)
    )
    assert plain.item() == pytest.approx(0.0)  # on target overall
    # layer 1 lies 0.1 above the band, layer 3 0.1 below it, layer 2 inside
    assert banded.item() == pytest.approx((0.1 + 0.0 + 0.1) / 3)
