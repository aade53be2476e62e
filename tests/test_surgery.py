"""Heads, freezing, parameter counts and layer-wise parameter groups."""

import pytest
import torch

from tests.helpers import TinyNet
from tlutils.core.surgery import (
    freeze,
    freeze_body_except_last,
    head_name,
    layerwise_param_groups,
    model_blocks,
    param_group_table,
    parameter_count,
    pooled_body,
    replace_head,
    set_train_mode,
    trainable_parameter_count,
    unfreeze,
)


def test_replace_head_changes_output_size_and_keeps_dropout():
    model = replace_head(TinyNet(num_classes=3), num_classes=7)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 7)
    assert isinstance(model.classifier[1], torch.nn.Dropout)


@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "10"])
def test_replace_head_rejects_bad_class_counts(bad):
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        replace_head(TinyNet(), num_classes=bad)


def test_head_name_error_is_clear():
    with pytest.raises(ValueError, match="none of the head attributes"):
        head_name(torch.nn.Linear(2, 2))


def test_freeze_then_unfreeze_head_counts():
    model = TinyNet()
    freeze(model)
    assert trainable_parameter_count(model) == 0
    unfreeze(model, ["classifier"])
    assert trainable_parameter_count(model) == 8 * 3 + 3
    assert parameter_count(model) > trainable_parameter_count(model)


def test_freeze_unknown_name_is_an_error():
    with pytest.raises(ValueError, match="no parameters under"):
        freeze(TinyNet(), ["feature"])


def test_unfreeze_last_k_blocks():
    model = TinyNet()
    blocks = model_blocks(model)
    assert [name for name, _ in blocks] == ["features.0", "features.1"]
    freeze_body_except_last(model, 1)
    trainable = {n.split(".")[0] + "." + n.split(".")[1] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"features.1", "classifier.2"}
    with pytest.raises(ValueError, match="between 0 and 2"):
        freeze_body_except_last(model, 3)


def test_frozen_batchnorm_stays_in_eval_mode_and_keeps_statistics():
    model = TinyNet()
    freeze_body_except_last(model, 1)
    set_train_mode(model)
    frozen_bn, trained_bn = model.features[0][1], model.features[1][1]
    assert not frozen_bn.training and trained_bn.training
    before = frozen_bn.running_mean.clone()
    model(torch.randn(4, 1, 8, 8) + 5)
    assert torch.equal(before, frozen_bn.running_mean)


def test_layerwise_groups_decay_from_the_head_down():
    model = TinyNet()
    groups = layerwise_param_groups(model, head_lr=1e-2, decay=0.5)
    assert [g["name"] for g in groups] == ["classifier", "features.0", "features.1"]
    rates = {g["name"]: g["lr"] for g in groups}
    assert rates == pytest.approx({"classifier": 1e-2, "features.1": 5e-3, "features.0": 2.5e-3})
    table = param_group_table(torch.optim.AdamW(groups))
    assert "features.0" in table and f"{parameter_count(model):,}" in table


def test_layerwise_groups_skip_frozen_and_check_lengths():
    model = TinyNet()
    freeze_body_except_last(model, 1)
    assert [g["name"] for g in layerwise_param_groups(model, 1e-3)] == ["classifier", "features.1"]
    with pytest.raises(ValueError, match="block_lrs has 1 rates but the model has 2 blocks"):
        layerwise_param_groups(model, 1e-3, block_lrs=[1e-4])


def test_real_mobilenet_blocks_and_head():
    from tlutils.core.models import load_mobilenet_v2

    model = replace_head(load_mobilenet_v2(), 10)
    assert len(model_blocks(model)) == 19
    freeze_body_except_last(model, 0)
    assert trainable_parameter_count(model) == 1280 * 10 + 10


def test_pooled_body_plus_head_is_the_model():
    model = TinyNet().eval()
    images = torch.randn(2, 1, 8, 8)
    assert torch.allclose(model.classifier(pooled_body(model)(images)), model(images))
    with pytest.raises(ValueError, match="has no 'features' module"):
        pooled_body(torch.nn.Linear(2, 2))
