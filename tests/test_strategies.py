"""Fine-tuning strategies on a tiny CNN: each trains what it should, and loss falls."""

import pytest
import torch

from tests.helpers import TinyNet, toy_loader
from tlutils.core.metrics import accuracy_standard_error
from tlutils.core.plots import plot_trainable_blocks
from tlutils.core.runtime import set_seed
from tlutils.core.surgery import trainable_parameters_per_block
from tlutils.course.strategy_table import plot_strategy_table, strategy_summary
from tlutils.topics.regularizers import snapshot_weights
from tlutils.topics.strategies import (
    StrategyRun,
    feature_extraction,
    full_fine_tuning,
    gradual_unfreezing,
    grouped_block_lrs,
    layerwise_lr_fine_tuning,
    linear_probe_then_fine_tune,
    partial_fine_tuning,
)

CPU = torch.device("cpu")


def _changed_blocks(model, start) -> set[str]:
    return {".".join(name.split(".")[:2]) for name, param in model.named_parameters()
            if not torch.equal(param.detach(), start[name])}


def _fresh():
    set_seed(0)
    model = TinyNet()
    return model, snapshot_weights(model)


def test_feature_extraction_trains_only_the_head_and_caches(temp_cache):
    model, start = _fresh()
    run = feature_extraction(model, toy_loader(shuffle=False), toy_loader(shuffle=False), epochs=5, lr=5e-2,
                             device=CPU, cache_name="test_fe", fingerprint="tiny")
    assert run.history.train_loss[-1] < run.history.train_loss[0]
    assert _changed_blocks(model, start) == {"classifier.2"}
    assert run.trainable_params == 8 * 3 + 3
    assert (temp_cache / "features" / "test_fe_train.safetensors").is_file()
    with pytest.raises(ValueError, match="shuffles"):
        feature_extraction(model, toy_loader(shuffle=True), toy_loader(shuffle=False), epochs=1, lr=1e-2, device=CPU)


def test_partial_fine_tuning_leaves_lower_blocks_untouched():
    model, start = _fresh()
    run = partial_fine_tuning(model, toy_loader(), toy_loader(shuffle=False), blocks=1, epochs=4, lr=3e-2,
                              device=CPU)
    assert run.history.train_loss[-1] < run.history.train_loss[0]
    assert _changed_blocks(model, start) == {"features.1", "classifier.2"}
    assert run.name == "partial (last 1 blocks)"


def test_full_fine_tuning_changes_every_block():
    model, start = _fresh()
    run = full_fine_tuning(model, toy_loader(), toy_loader(shuffle=False), epochs=4, lr=3e-2, device=CPU)
    assert run.history.train_loss[-1] < run.history.train_loss[0]
    assert _changed_blocks(model, start) == {"features.0", "features.1", "classifier.2"}
    with pytest.raises(ValueError, match="epochs must be a positive number"):
        full_fine_tuning(model, toy_loader(), None, epochs=0, lr=1e-3, device=CPU)


def test_grouped_block_lrs_splits_blocks_into_contiguous_groups():
    assert grouped_block_lrs(5, [0.1, 1.0]) == [0.1, 0.1, 0.1, 1.0, 1.0]
    assert grouped_block_lrs(3, [1e-3]) == [1e-3] * 3
    with pytest.raises(ValueError, match="need between 1 and 2 group rates"):
        grouped_block_lrs(2, [1, 2, 3])
    with pytest.raises(ValueError, match="every group rate must be a positive number"):
        grouped_block_lrs(2, [1e-3, 0])


def test_layerwise_rates_train_and_report_their_groups():
    model, _ = _fresh()
    run = layerwise_lr_fine_tuning(model, toy_loader(), toy_loader(shuffle=False), epochs=4, head_lr=3e-2,
                                   decay=0.5, device=CPU)
    assert run.history.train_loss[-1] < run.history.train_loss[0]
    assert "features.0" in run.details and "7.50e-03" in run.details  # 3e-2 * 0.5**2
    model, _ = _fresh()
    run = layerwise_lr_fine_tuning(model, toy_loader(), None, epochs=2, head_lr=3e-2,
                                   block_lrs=grouped_block_lrs(2, [1e-3, 1e-2]), device=CPU)
    assert run.name == "discriminative rates" and "1.00e-03" in run.details


def test_gradual_unfreezing_adds_blocks_stage_by_stage():
    model, start = _fresh()
    run = gradual_unfreezing(model, toy_loader(), toy_loader(shuffle=False), schedule=[0, 1, 2],
                             epochs_per_stage=2, lr=3e-2, device=CPU)
    assert [stage for stage, _ in run.stages] == ["last 0 blocks", "last 1 blocks", "last 2 blocks"]
    assert len(run.history) == 6 and run.history["stage"][0] == "last 0 blocks"
    assert run.history.train_loss[-1] < run.history.train_loss[0]
    assert _changed_blocks(model, start) == {"features.0", "features.1", "classifier.2"}
    with pytest.raises(ValueError, match="must not decrease"):
        gradual_unfreezing(model, toy_loader(), None, schedule=[2, 0], epochs_per_stage=1, lr=1e-2, device=CPU)
    with pytest.raises(ValueError, match="one learning rate per stage"):
        gradual_unfreezing(model, toy_loader(), None, schedule=[0, 1], epochs_per_stage=1, lr=[1e-2], device=CPU)


def test_lp_ft_trains_the_head_first_then_everything():
    model, start = _fresh()
    run = linear_probe_then_fine_tune(model, toy_loader(shuffle=False), toy_loader(shuffle=False), toy_loader(),
                                      toy_loader(shuffle=False), probe_epochs=3, probe_lr=5e-2, epochs=2, lr=1e-2,
                                      device=CPU)
    assert [stage for stage, _ in run.stages] == ["head on cached features", "then all layers"]
    assert run.history.train_loss[-1] < run.history.train_loss[0]
    assert _changed_blocks(model, start) == {"features.0", "features.1", "classifier.2"}


def test_summary_and_per_block_table():
    model, _ = _fresh()
    run = partial_fine_tuning(model, toy_loader(), None, blocks=1, epochs=1, lr=1e-2, device=CPU)
    row = strategy_summary(run, model, toy_loader(shuffle=False), toy_loader(shuffle=False), CPU)
    assert set(row) == {"strategy", "trainable_params", "seconds", "val_accuracy", "test_accuracy"}
    assert 0 <= row["test_accuracy"] <= 1 and row["trainable_params"] == run.trainable_params
    blocks = trainable_parameters_per_block(model)
    assert [b["block"] for b in blocks] == ["features.0", "features.1", "classifier"]
    assert blocks[0]["trainable"] == 0 and blocks[1]["trainable"] == blocks[1]["params"]
    assert plot_trainable_blocks(model).axes
    assert len(StrategyRun("empty").history) == 0


def test_standard_error_and_strategy_plot():
    import pandas as pd

    assert accuracy_standard_error(0.5, 100) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="need n >= 1"):
        accuracy_standard_error(0.5, 0)
    table = pd.DataFrame([{"strategy": "a", "trainable_params": 10, "seconds": 1.0, "test_accuracy": 0.8},
                          {"strategy": "b", "trainable_params": 1000, "seconds": 5.0, "test_accuracy": 0.9}])
    assert len(plot_strategy_table(table, test_size=100).axes) == 3
