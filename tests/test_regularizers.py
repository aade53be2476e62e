"""Joint source + target training, L2-SP and weight decay penalties, per-block diagnostics."""

import pytest
import torch
from torch import nn

from tests.helpers import TinyNet, toy_loader
from tlutils.core.runtime import set_seed
from tlutils.core.surgery import freeze_body_except_last
from tlutils.core.train import fit
from tlutils.course.mathematics import plot_lambda_sweep
from tlutils.topics.regularizers import (
    PenalizedLoss,
    TwoHeadNet,
    fit_joint,
    gradient_norm_per_block,
    joint_accuracy,
    joint_loss,
    l2_penalty,
    l2_sp_penalty,
    make_penalty,
    snapshot_weights,
    total_weight_distance,
    weight_distance_per_block,
)


def _value(tensor: torch.Tensor) -> float:
    return float(tensor.detach())


def test_snapshot_is_a_detached_copy():
    model = TinyNet()
    start = snapshot_weights(model)
    with torch.no_grad():
        model.classifier[2].weight.add_(1.0)
    assert not torch.equal(start["classifier.2.weight"], model.classifier[2].weight)
    assert not any(t.requires_grad for t in start.values())


def test_l2_sp_is_zero_at_the_start_and_counts_the_head_as_weight_decay():
    model = TinyNet()
    start = snapshot_weights(model)
    assert _value(l2_sp_penalty(model, start, alpha=1.0)) == 0.0
    head_squares = sum(_value(p.pow(2).sum()) for p in model.classifier.parameters())
    assert _value(l2_sp_penalty(model, start, alpha=1.0, beta=2.0)) == pytest.approx(head_squares)


def test_l2_sp_measures_the_distance_from_the_start_and_plain_l2_from_zero():
    model = TinyNet()
    start = snapshot_weights(model)
    with torch.no_grad():
        for param in model.features.parameters():
            param.add_(0.5)
    body_count = sum(p.numel() for p in model.features.parameters())
    assert _value(l2_sp_penalty(model, start, alpha=2.0)) == pytest.approx(0.25 * body_count, rel=1e-5)
    squares = sum(_value(p.pow(2).sum()) for p in model.parameters())
    assert _value(l2_penalty(model, alpha=2.0)) == pytest.approx(squares, rel=1e-5)


def test_penalties_skip_frozen_parameters_and_reject_bad_input():
    model = TinyNet()
    start = snapshot_weights(model)
    freeze_body_except_last(model, 0)
    with torch.no_grad():
        model.features[0][0].weight.add_(1.0)  # frozen: must not count
    assert _value(l2_sp_penalty(model, start, alpha=1.0)) == 0.0
    with pytest.raises(ValueError, match="alpha must be a number >= 0"):
        l2_sp_penalty(model, start, alpha=-1.0)
    other = snapshot_weights(TinyNet(num_classes=5))
    unfrozen = TinyNet()
    with pytest.raises(ValueError, match="take the snapshot from this model"):
        l2_sp_penalty(unfrozen, {**snapshot_weights(unfrozen), "classifier.2.weight": other["classifier.2.weight"]},
                      alpha=1.0, head="features")


def test_penalized_loss_only_adds_the_penalty_while_training():
    loss_fn = PenalizedLoss(lambda: torch.tensor(5.0))
    logits, targets = torch.zeros(4, 3), torch.tensor([0, 1, 2, 0])
    plain = float(nn.functional.cross_entropy(logits, targets))
    assert float(loss_fn(logits, targets)) == pytest.approx(plain)
    assert _value(loss_fn(logits.requires_grad_(), targets)) == pytest.approx(plain + 5.0)
    with pytest.raises(ValueError, match="penalty must be a function"):
        PenalizedLoss(3.0)


def test_l2_sp_keeps_fine_tuning_closer_to_the_start():
    distances = {}
    for alpha in (0.0, 5.0):
        set_seed(0)
        model = TinyNet()
        start = snapshot_weights(model)
        loss_fn = PenalizedLoss(lambda: l2_sp_penalty(model, start, alpha=alpha))
        history = fit(model, toy_loader(), epochs=4, lr=3e-2, loss_fn=loss_fn, seed=0, progress=False)
        assert history.train_loss[-1] < history.train_loss[0]
        distances[alpha] = total_weight_distance(model, start, exclude=["classifier"])
    assert distances[5.0] < distances[0.0]


def test_weight_distance_per_block_lists_blocks_then_head():
    model = TinyNet()
    start = snapshot_weights(model)
    with torch.no_grad():
        model.features[1][0].weight.mul_(2.0)
    rows = weight_distance_per_block(model, start)
    assert [row["block"] for row in rows] == ["features.0", "features.1", "classifier"]
    assert rows[0]["distance"] == 0.0 and rows[2]["distance"] == 0.0
    assert 0 < rows[1]["relative"] < 1
    with pytest.raises(ValueError, match="reference has no entry"):
        weight_distance_per_block(model, {})


def test_frozen_blocks_receive_no_gradient():
    model = TinyNet()
    freeze_body_except_last(model, 1)
    images, labels = next(iter(toy_loader()))
    nn.functional.cross_entropy(model(images), labels).backward()
    rows = {row["block"]: row for row in gradient_norm_per_block(model)}
    assert rows["features.0"]["with_grad"] == 0 and rows["features.0"]["grad_norm"] == 0.0
    assert rows["features.1"]["with_grad"] == rows["features.1"]["trainable"] > 0
    assert rows["classifier"]["grad_norm"] > 0


def _two_head_net() -> TwoHeadNet:
    shared = nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.ReLU())
    return TwoHeadNet(shared, nn.Linear(4, 3), nn.Linear(4, 2))


def test_joint_loss_weights_the_target_term():
    assert float(joint_loss(torch.tensor(1.0), torch.tensor(2.0), lam=0.5)) == 2.0
    with pytest.raises(ValueError, match="lam must be a number >= 0"):
        joint_loss(torch.tensor(1.0), torch.tensor(2.0), lam=-1)
    with pytest.raises(ValueError, match="task must be one of"):
        _two_head_net()(torch.zeros(1, 1, 8, 8), task="other")


def test_fit_joint_lowers_both_losses_and_lambda_zero_ignores_the_target():
    source, target = toy_loader(num_classes=3, seed=0), toy_loader(n=16, num_classes=2, seed=1)
    set_seed(0)
    model = _two_head_net()
    history = fit_joint(model, source, target, lam=1.0, epochs=6, lr=3e-2, device=torch.device("cpu"),
                        source_val=toy_loader(num_classes=3, shuffle=False), target_val=target)
    assert history["source_loss"][-1] < history["source_loss"][0]
    assert history["target_loss"][-1] < history["target_loss"][0]
    assert {"val_source_accuracy", "val_target_accuracy"} <= set(history.epochs[-1])
    set_seed(0)
    untouched = _two_head_net()
    before = untouched.heads["target"].weight.detach().clone()
    fit_joint(untouched, source, target, lam=0.0, epochs=1, lr=3e-2, device=torch.device("cpu"))
    assert torch.equal(before, untouched.heads["target"].weight)
    assert 0.0 <= joint_accuracy(untouched, target, "target", torch.device("cpu")) <= 1.0


def test_make_penalty_by_name():
    model = TinyNet()
    start = snapshot_weights(model)
    assert _value(make_penalty("none", model)()) == 0.0
    assert _value(make_penalty("l2", model, alpha=1.0)()) == pytest.approx(_value(l2_penalty(model, 1.0)))
    head_only = _value(l2_sp_penalty(model, start, alpha=1.0, beta=1.0))
    assert _value(make_penalty("l2_sp", model, start, alpha=1.0)()) == pytest.approx(head_only)
    with pytest.raises(ValueError, match="unknown penalty"):
        make_penalty("l1", model)
    with pytest.raises(ValueError, match="needs reference"):
        make_penalty("l2_sp", model, alpha=1.0)


def test_plot_lambda_sweep_returns_a_figure_and_checks_lengths():
    fig = plot_lambda_sweep([0, 0.1, 1], [0.8, 0.7, 0.6], [0.1, 0.5, 0.7], highlight=0.1)
    assert fig.axes[0].get_xscale() == "symlog"
    with pytest.raises(ValueError, match="one value each"):
        plot_lambda_sweep([0, 1], [0.8], [0.1, 0.2])


def test_norms_and_biases_can_be_left_out_of_both_penalties():
    from tlutils.core.surgery import decayed_parameter_names

    model = TinyNet()
    kept = decayed_parameter_names(model)
    assert "features.0.0.weight" in kept and "classifier.2.weight" in kept
    assert "features.0.1.weight" not in kept and "features.0.0.bias" not in kept   # BatchNorm scale, a bias
    squares = sum(float(p.pow(2).sum()) for n, p in model.named_parameters() if n in kept)
    assert _value(l2_penalty(model, 2.0, skip_norms_and_biases=True)) == pytest.approx(squares, rel=1e-5)
    start = snapshot_weights(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.add_(1.0)     # moving only BatchNorm scales costs nothing when they are skipped
    assert _value(make_penalty("l2_sp", model, start, alpha=1.0, beta=0.0, skip_norms_and_biases=True)()) == 0.0
    assert _value(make_penalty("l2_sp", model, start, alpha=1.0, beta=0.0)()) > 0.0
