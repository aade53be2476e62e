"""fit (with step functions and budgets), evaluate, early stopping, seeding, failures, checkpoints."""

import pytest
import torch

from tests.helpers import TinyNet, toy_loader
from tlutils.core.runtime import set_seed
from tlutils.core.surgery import layerwise_param_groups
from tlutils.core.train import evaluate, fit, load_checkpoint, predict, save_checkpoint


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
    with pytest.raises(ValueError, match="the loader is empty"):
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


# ------------------------------------------------------------------ step functions, budgets, failures


def test_a_joint_objective_is_a_step_function_of_fit():
    from torch import nn

    from tlutils.topics.regularizers import JointBatches, TwoHeadNet, joint_step

    set_seed(0)
    model = TwoHeadNet(nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU()), nn.Linear(8, 3), nn.Linear(8, 2))
    batches = JointBatches(toy_loader(num_classes=3, seed=0), toy_loader(n=16, num_classes=2, seed=1))
    history = fit(model, batches, epochs=5, lr=3e-2, step=joint_step(lam=2.0), seed=0, progress=False)
    assert history.train_loss[-1] < history.train_loss[0]
    assert history["target_loss"][-1] < history["target_loss"][0]
    # the logged total is the objective itself: L_source + lambda * L_target, epoch by epoch
    for row in history.epochs:
        assert row["train_loss"] == pytest.approx(row["source_loss"] + 2.0 * row["target_loss"], rel=1e-5)


def test_a_detector_trains_through_fit_with_its_step_function():
    import numpy as np

    from tlutils.topics.detection import DetectionBatches, build_mobilenet_faster_rcnn, detection_step

    rng = np.random.default_rng(0)
    images, boxes = [], []
    for _ in range(4):
        image = np.full((64, 64, 3), 30, np.uint8)
        x, y = rng.integers(4, 40, size=2)
        image[y:y + 20, x:x + 20] = 230
        images.append(image)
        boxes.append(np.array([[x, y, x + 20, y + 20]], np.float32))
    set_seed(0)
    model = build_mobilenet_faster_rcnn(num_classes=2, pretrained=False, blocks=7, image_size=64,
                                        anchor_sizes=(16, 32), representation=32)
    history = fit(model, DetectionBatches(images, boxes, batch_size=4, seed=0), epochs=5, lr=1e-3,
                  step=detection_step, device=torch.device("cpu"), seed=0, progress=False)
    assert history.train_loss[-1] < history.train_loss[0]
    assert {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"} <= set(history.epochs[0])


def test_the_step_budget_stops_training_and_spans_the_schedule():
    loader = toy_loader()  # 6 batches per epoch
    history = fit(TinyNet(), loader, epochs=10, max_steps=9, lr=1e-2, scheduler="linear", seed=0, progress=False)
    assert history.steps == 9 and len(history) == 2 and history.epochs[-1]["steps"] == 9


def test_diverging_training_stops_with_the_likely_causes():
    images = torch.randn(16, 1, 8, 8)
    images[3] = float("nan")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, torch.arange(16) % 3), batch_size=16)
    with pytest.raises(FloatingPointError, match="learning rate.*NaN or infinite values in the inputs.*-100"):
        fit(TinyNet(), loader, epochs=2, progress=False)


def test_a_diverged_run_keeps_its_best_weights():
    good_batches = list(toy_loader())

    class PoisonedSecondEpoch:
        """Good batches in epoch 1, NaN inputs in epoch 2."""

        def __init__(self):
            self.epoch = 0

        def __len__(self):
            return len(good_batches)

        def __iter__(self):
            self.epoch += 1
            for images, labels in good_batches:
                yield (images if self.epoch == 1 else torch.full_like(images, float("nan"))), labels

    model = TinyNet()
    with pytest.raises(FloatingPointError, match="epoch 2, step 7"):
        fit(model, PoisonedSecondEpoch(), toy_loader(shuffle=False), epochs=3, lr=1e-2, seed=0, progress=False)
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())
    assert evaluate(model, toy_loader(shuffle=False))["accuracy"] > 0


def test_evaluate_refuses_non_finite_logits():
    class Broken(torch.nn.Module):
        def forward(self, x):
            return torch.full((len(x), 3), float("nan"))

    with pytest.raises(FloatingPointError, match="NaN or infinite logits for 48 of 48"):
        evaluate(Broken(), toy_loader(shuffle=False))


def test_argument_mistakes_are_found_before_the_first_epoch():
    model = TinyNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="either optimizer= or lr="):
        fit(model, toy_loader(), optimizer=optimizer, lr=1e-3, progress=False)
    with pytest.raises(ValueError, match="unknown metric 'acc'"):
        fit(model, toy_loader(), toy_loader(), metrics=("acc",), progress=False)
    with pytest.raises(ValueError, match="unknown monitor 'val_f1'.*'val_accuracy'"):
        fit(model, toy_loader(), toy_loader(), monitor="val_f1", progress=False)
    with pytest.raises(ValueError, match="patience=.*needs a validation set"):
        fit(model, toy_loader(), patience=2, progress=False)
    with pytest.raises(ValueError, match="loss_fn configures the default step"):
        fit(model, toy_loader(), step=lambda m, b, d: None, loss_fn=torch.nn.MSELoss(), progress=False)


def test_a_seeded_fit_leaves_the_global_random_state_alone():
    import random

    import numpy as np

    model, loader = TinyNet(), toy_loader()
    set_seed(123)
    expected = (torch.rand(1), np.random.rand(), random.random())
    set_seed(123)
    fit(model, loader, epochs=1, seed=7, progress=False)
    assert (torch.rand(1), np.random.rand(), random.random()) == expected


def test_one_evaluation_loop_serves_predict_and_feature_extraction():
    from tlutils.core.features import extract_features

    model = TinyNet().eval()
    logits, targets = predict(model, toy_loader(shuffle=False), torch.device("cpu"))
    features, labels = extract_features(model, toy_loader(shuffle=False), device=torch.device("cpu"), progress=False)
    assert logits.shape == (48, 3) and torch.equal(targets, labels) and torch.allclose(logits, features)


SEEDED_RUN = """
import torch
from tests.helpers import TinyNet, toy_loader
from tlutils.core.runtime import set_seed
from tlutils.core.train import fit

torch.set_num_threads(1)
set_seed(0)  # torch starts every process from a random seed: the new model's weights need this
history = fit(TinyNet(), toy_loader(seed=0), epochs=2, lr=0.01, seed=0, progress=False, device="cpu")
print(" ".join(float(loss).hex() for loss in history.train_loss))
"""


def test_a_seeded_run_repeated_in_two_processes_gives_bit_identical_losses():
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TLLAB_DEVICE": "cpu"}
    runs = [subprocess.run([sys.executable, "-c", SEEDED_RUN], cwd=root, env=env, capture_output=True, text=True,
                           timeout=300, check=True).stdout.split() for _ in range(2)]
    assert len(runs[0]) == 2 and all(value.startswith(("0x", "-0x")) for value in runs[0])
    assert runs[0] == runs[1]
