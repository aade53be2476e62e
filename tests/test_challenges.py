"""The objectives of notebook 12: gradient reversal, CORAL, DANN, EWC, LwF, mixup, BitFit, adapters."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers import TinyNet, toy_loader
from tlutils.core.train import fit
from tlutils.topics.domain import (
    BodyHead,
    GradientReversal,
    coral_loss,
    coral_step,
    dann_step,
    grad_reverse,
    labelled_target_step,
    proxy_a_distance,
)
from tlutils.topics.efficient import (
    BottleneckAdapter,
    add_adapter,
    bitfit,
    optimizer_state_bytes,
    quantize_dynamic_int8,
    trainable_bytes,
)
from tlutils.topics.forgetting import (
    distillation_loss,
    ewc_penalty,
    fisher_diagonal,
    lwf_step,
    penalty_step,
    record_logits,
    top1_agreement,
)
from tlutils.topics.overfitting import FeatureAugmentation, mixup_step, turning_epoch
from tlutils.topics.regularizers import JointBatches, TwoHeadNet, snapshot_weights

CPU = torch.device("cpu")


def _vectors(n=48, dim=6, shift=0.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    return torch.randn(n, dim, generator=generator) * 0.3 + labels[:, None].float() + shift, labels


def _loader(x, y, seed=0):
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(seed))


def _body_head(domain=False):
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU())
    return BodyHead(body, nn.Linear(8, 3), nn.Linear(8, 2) if domain else None)


def test_gradient_reversal_flips_the_sign_and_keeps_the_value():
    x = torch.randn(5, 3, requires_grad=True)
    y = grad_reverse(x, strength=0.5)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, -0.5))
    x.grad = None
    GradientReversal(2.0)(x).pow(2).sum().backward()
    assert torch.allclose(x.grad, -2.0 * 2 * x.detach())


def test_gradient_reversal_refuses_a_negative_strength():
    with pytest.raises(ValueError, match="strength"):
        grad_reverse(torch.ones(1), strength=-1.0)


def test_coral_loss_is_zero_for_equal_statistics_and_positive_otherwise():
    x = torch.randn(32, 4)
    assert float(coral_loss(x, x.clone())) == pytest.approx(0.0, abs=1e-7)
    assert float(coral_loss(x, 3 * x)) > 0
    with pytest.raises(ValueError, match="N x D"):
        coral_loss(x, torch.randn(32, 5))
    with pytest.raises(ValueError, match="two rows"):
        coral_loss(x[:1], x)


@pytest.mark.parametrize("make_step, domain", [(lambda: dann_step(0.5), True), (lambda: coral_step(1.0), False),
                                               (lambda: labelled_target_step(1.0), False)])
def test_domain_steps_make_the_loss_fall(make_step, domain):
    source, target = _vectors(seed=0), _vectors(shift=0.5, seed=1)
    model = _body_head(domain)
    history = fit(model, JointBatches(_loader(*source), _loader(*target, seed=1)), epochs=8, lr=1e-2,
                  step=make_step(), device=CPU, progress=False, seed=0)
    key = "task" if domain or "coral" in history.epochs[0] else "source"
    assert history[key][-1] < history[key][0]


def test_dann_step_needs_a_domain_head_and_pairs():
    source = _vectors()
    with pytest.raises(ValueError, match="domain_head"):
        fit(_body_head(False), JointBatches(_loader(*source), _loader(*source)), epochs=1, step=dann_step(),
            device=CPU, progress=False)
    with pytest.raises(ValueError, match="JointBatches"):
        fit(_body_head(True), _loader(*source), epochs=1, step=dann_step(), device=CPU, progress=False)


def test_proxy_a_distance_separates_shifted_domains():
    same = proxy_a_distance(torch.randn(200, 4), torch.randn(200, 4), seed=0)
    far = proxy_a_distance(torch.randn(200, 4), torch.randn(200, 4) + 3.0, seed=0)
    assert far["domain_accuracy"] > 0.95 and far["proxy_a_distance"] > 1.8
    assert abs(same["proxy_a_distance"]) < 0.5
    with pytest.raises(ValueError, match="N x D"):
        proxy_a_distance(torch.randn(10, 4), torch.randn(10, 3))


def _two_head():
    torch.manual_seed(0)
    return TwoHeadNet(nn.Sequential(nn.Linear(6, 8), nn.ReLU()), nn.Linear(8, 5), nn.Linear(8, 3))


def test_ewc_penalty_is_zero_at_the_start_and_grows_with_the_change():
    model = _two_head()
    start = snapshot_weights(model)
    shared = {n: p for n, p in model.named_parameters() if n.startswith("shared.")}
    x, _ = _vectors()
    fisher = fisher_diagonal(lambda inputs: model(inputs, "source"), _loader(x, torch.zeros(len(x))), shared, CPU)
    assert all((f >= 0).all() for f in fisher.values()) and any(f.sum() > 0 for f in fisher.values())
    assert float(ewc_penalty(model, start, fisher, strength=10.0).detach()) == 0.0
    with torch.no_grad():
        model.shared[0].weight.add_(0.1)
    small = float(ewc_penalty(model, start, fisher, strength=10.0).detach())
    assert small > 0 and float(ewc_penalty(model, start, fisher, strength=20.0).detach()) == pytest.approx(2 * small)


def test_ewc_penalty_refuses_foreign_fisher_and_bad_strength():
    model = _two_head()
    start = snapshot_weights(model)
    with pytest.raises(ValueError, match="lack"):
        ewc_penalty(model, start, {"nope.weight": torch.ones(1)}, 1.0)
    with pytest.raises(ValueError, match="strength"):
        ewc_penalty(model, start, {}, -1.0)
    with pytest.raises(ValueError, match="parameters is empty"):
        fisher_diagonal(model, [], {}, CPU)


def test_penalty_step_with_ewc_trains_and_logs_the_parts():
    model = _two_head()
    start = snapshot_weights(model)
    fisher = {n: torch.ones_like(p) for n, p in model.named_parameters() if n.startswith("shared.")}
    history = fit(model, _loader(*_vectors()), epochs=6, lr=1e-2, device=CPU, progress=False, seed=0,
                  step=penalty_step(lambda: ewc_penalty(model, start, fisher, strength=1.0)))
    assert history["task"][-1] < history["task"][0] and history["penalty"][0] >= 0
    with pytest.raises(ValueError, match="penalty"):
        penalty_step(3.0)


def test_lwf_step_makes_the_loss_fall_and_keeps_the_source_outputs_closer():
    x, y = _vectors()
    old = record_logits(lambda inputs: _two_head()(inputs, "source"), DataLoader(TensorDataset(x, y), batch_size=16),
                        CPU)
    data = DataLoader(TensorDataset(x, y, old), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
    runs = {}
    for weight in (0.0, 5.0):
        model = _two_head()
        history = fit(model, data, epochs=8, lr=3e-2, step=lwf_step(weight), device=CPU, progress=False, seed=0)
        assert history["task"][-1] < history["task"][0]
        runs[weight] = float(distillation_loss(model.eval()(x, "source"), old).detach())
    assert runs[5.0] < runs[0.0]
    with pytest.raises(ValueError, match="old_source_logits"):
        fit(_two_head(), _loader(x, y), epochs=1, step=lwf_step(), device=CPU, progress=False)


def test_distillation_and_agreement():
    logits = torch.randn(10, 4)
    assert float(distillation_loss(logits, logits.clone())) == pytest.approx(0.0, abs=1e-6)
    assert top1_agreement(logits, logits) == 1.0 and top1_agreement(logits, -logits) == 0.0
    with pytest.raises(ValueError, match="shape"):
        top1_agreement(logits, logits[:5])
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(logits, logits, temperature=0)


def test_mixup_step_makes_the_loss_fall_and_refuses_bad_alpha():
    history = fit(TinyNet(), toy_loader(), epochs=6, lr=1e-2, step=mixup_step(0.4), device=CPU, progress=False,
                  seed=0)
    assert history.train_loss[-1] < history.train_loss[0]
    with pytest.raises(ValueError, match="alpha"):
        mixup_step(0.0)


def test_turning_epoch_and_feature_augmentation():
    assert turning_epoch([1.0, 0.6, 0.7, 0.9]) == 2 and turning_epoch([3, 2, 1]) == 3
    with pytest.raises(ValueError, match="non-empty"):
        turning_epoch([])
    views, labels = torch.stack([torch.zeros(4, 2), torch.ones(4, 2)]), torch.arange(4)
    dataset = FeatureAugmentation(views, labels)
    torch.manual_seed(0)
    drawn = {float(dataset[0][0][0]) for _ in range(20)}
    assert drawn == {0.0, 1.0} and len(dataset) == 4
    with pytest.raises(ValueError, match="views"):
        FeatureAugmentation(views, torch.arange(3))


def test_bitfit_trains_only_biases():
    model = bitfit(TinyNet(), keep=("classifier",))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.endswith(".bias") or n.startswith("classifier.") for n in trainable)
    assert "features.0.0.bias" in trainable and "features.0.0.weight" not in trainable
    before = snapshot_weights(model)
    fit(model, toy_loader(), epochs=2, lr=1e-2, device=CPU, progress=False, seed=0)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and changed <= trainable
    with pytest.raises(ValueError, match="no parameters named"):
        bitfit(nn.Linear(3, 2, bias=False))


def test_adapter_starts_as_identity_and_costs_are_measured():
    layer = nn.Linear(4, 4)
    wrapped = add_adapter(layer, dim=4, bottleneck=2)
    x = torch.randn(3, 4)
    assert torch.allclose(wrapped(x), layer(x))
    assert not any(p.requires_grad for p in layer.parameters())
    assert trainable_bytes(wrapped) == (4 * 2 + 2 + 2 * 4 + 4) * 4
    optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad])
    wrapped(x).sum().backward()
    optimizer.step()
    assert optimizer_state_bytes(optimizer) >= 2 * trainable_bytes(wrapped)
    with pytest.raises(ValueError, match="positive"):
        BottleneckAdapter(4, 0)


def test_int8_quantisation_keeps_predictions_close():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3)).eval()
    x = torch.randn(20, 16)
    quantized = quantize_dynamic_int8(model)
    assert (quantized(x).argmax(1) == model(x).argmax(1)).float().mean() >= 0.9
    with pytest.raises(ValueError, match="nn.Linear"):
        quantize_dynamic_int8(nn.Sequential(nn.ReLU()))
