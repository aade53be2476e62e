"""fit, evaluate, early stopping, seeding, checkpoints."""

import pytest
import torch

from tests.helpers import TinyNet, toy_loader
from tlutils.surgery import layerwise_param_groups
from tlutils.train import evaluate, fit, load_checkpoint, save_checkpoint
from tlutils.utils import set_seed


def test_loss_falls_and_history_records_everything():
    history = fit(TinyNet(), toy_loader(), toy_loader(shuffle=False), epochs=4, lr=3e-2, seed=0, progress=False)
    assert history.train_loss[-1] < history.train_loss[0]
    assert set(history.epochs[0]) >= {"epoch", "train_loss", "val_loss", "val_accuracy", "lr", "seconds"}
    assert history.to_frame().shape[0] == 4
    assert history.plot().axes


def test_seeded_runs_are_identical():
    def run():
        set_seed(3)  # seeds the new head's initialisation as well as the training
        return fit(TinyNet(), toy_loader(), epochs=2, lr=1e-2, seed=3, progress=False).train_loss

    assert run() == run()


def test_early_stopping_restores_the_best_epoch():
    model = TinyNet()
    # a learning rate this high diverges, so validation loss stops improving quickly
    history = fit(model, toy_loader(), toy_loader(shuffle=False), epochs=30, lr=5.0, patience=2, seed=0,
                  progress=False)
    assert history.stopped_early and len(history) < 30
    best = min(history.val_loss)
    assert evaluate(model, toy_loader(shuffle=False))["loss"] == pytest.approx(best, rel=1e-4)


def test_schedulers_gradient_clipping_and_param_groups():
    model = TinyNet()
    optimizer = torch.optim.AdamW(layerwise_param_groups(model, head_lr=1e-2, decay=0.5))
    history = fit(model, toy_loader(), epochs=2, optimizer=optimizer, scheduler="cosine", max_grad_norm=1.0,
                  seed=0, progress=False)
    assert history["lr"][1] < history["lr"][0]
    with pytest.raises(ValueError, match="unknown scheduler"):
        fit(TinyNet(), toy_loader(), epochs=1, scheduler="warp", progress=False)


def test_wrong_number_of_classes_is_explained():
    with pytest.raises(ValueError, match="model outputs 2 classes; call replace_head"):
        fit(TinyNet(num_classes=2), toy_loader(num_classes=3), epochs=1, progress=False)


def test_empty_data_and_frozen_model_are_explained():
    empty = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(0, 1, 8, 8),
                                                                       torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ValueError, match="train_loader is empty"):
        fit(TinyNet(), empty, epochs=1, progress=False)
    with pytest.raises(ValueError, match="evaluation loader is empty"):
        evaluate(TinyNet(), empty)
    model = TinyNet().requires_grad_(False)
    with pytest.raises(ValueError, match="every parameter is frozen"):
        fit(model, toy_loader(), epochs=1, progress=False)


def test_dict_batches_like_hugging_face():
    class DictModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.classifier = torch.nn.Linear(4, 2)

        def forward(self, features):
            return self.classifier(features)

    data = [{"features": torch.randn(8, 4) + torch.arange(8)[:, None] % 2 * 2, "labels": torch.arange(8) % 2}] * 4
    history = fit(DictModel(), data, epochs=3, lr=0.1, seed=0, progress=False)
    assert history.train_loss[-1] < history.train_loss[0]


def test_checkpoint_round_trip(tmp_path):
    model = TinyNet()
    fit(model, toy_loader(), epochs=1, seed=0, progress=False)
    path = save_checkpoint(model, tmp_path / "tiny.safetensors", metadata={"epochs": 1})
    fresh = TinyNet()
    assert load_checkpoint(fresh, path) == {"epochs": 1}
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)


def test_corrupted_or_mismatched_checkpoint_is_refused(tmp_path):
    path = save_checkpoint(TinyNet(), tmp_path / "tiny.safetensors")
    with pytest.raises(ValueError, match="does not fit this model"):
        load_checkpoint(TinyNet(num_classes=5), path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable safetensors checkpoint"):
        load_checkpoint(TinyNet(), path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(TinyNet(), tmp_path / "missing.safetensors")
