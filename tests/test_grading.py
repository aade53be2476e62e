"""Notebook 10, section 5 (grading): the cached MNIST reader, the four arms, thresholds and the teacher's view."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tlutils.core.compare import Budget, compare
from tlutils.course import grading


def toy_images(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28 x 28 uint8 'digits': class k is a bright bar in row band k, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), n_per_class)
    images = rng.integers(0, 40, size=(len(labels), 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, 2 + 2 * label: 4 + 2 * label, 4:24] = 255
    return images, labels


@pytest.fixture(scope="module")
def reader_and_task(tmp_path_factory):
    train, val = toy_images(8, 0), toy_images(3, 1)
    path = tmp_path_factory.mktemp("reader") / "reader.safetensors"
    reader = grading.pretrained_digit_reader(train, val, "toy", epochs=1, batch_size=16, path=path, progress=False)
    images, labels = toy_images(12, 2)
    pixels = grading.as_pixels(images)
    features = grading.ReaderBody(reader.model).eval()(pixels).detach()
    index = np.arange(len(labels))
    pool, val_index, test = index[index % 12 < 4], index[(index % 12 >= 4) & (index % 12 < 8)], index[index % 12 >= 8]
    task = grading.GradingTask(pixels, features, torch.as_tensor(labels), pool, val_index, test)
    return reader, path, train, val, task


def test_reader_is_cached_and_verified(reader_and_task):
    reader, path, train, val, _ = reader_and_task
    assert reader.trained_now and path.with_suffix(".sha256").is_file()
    again = grading.pretrained_digit_reader(train, val, "toy", epochs=1, batch_size=16, path=path, progress=False)
    assert not again.trained_now and again.sha256 == reader.sha256
    for name, tensor in reader.model.state_dict().items():
        assert torch.equal(tensor, again.model.state_dict()[name]), name


def test_reader_retrains_on_another_recipe_or_a_damaged_file(reader_and_task, tmp_path):
    _, path, train, val, _ = reader_and_task
    copy = tmp_path / "reader.safetensors"
    copy.write_bytes(path.read_bytes())
    copy.with_suffix(".sha256").write_text(path.with_suffix(".sha256").read_text())
    assert grading.pretrained_digit_reader(train, val, "other data", epochs=1, batch_size=16, path=copy,
                                           progress=False).trained_now
    copy.write_bytes(copy.read_bytes()[:-10] + b"0123456789")  # damaged: the hash no longer matches
    assert grading.pretrained_digit_reader(train, val, "other data", epochs=1, batch_size=16, path=copy,
                                           progress=False).trained_now


def test_bad_inputs_are_refused(reader_and_task):
    reader, _, train, val, task = reader_and_task
    with pytest.raises(ValueError, match="28 x 28 uint8"):
        grading.as_pixels(np.zeros((2, 8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="positive"):
        grading.pretrained_digit_reader(train, val, "toy", epochs=0)
    with pytest.raises(ValueError, match="overlap"):
        grading.GradingTask(task.pixels, task.features, task.labels, task.pool, task.pool, task.test)
    with pytest.raises(ValueError, match="one row per image"):
        grading.GradingTask(task.pixels[:5], task.features, task.labels, task.pool, task.val, task.test)
    with pytest.raises(ValueError, match="lrs lacks"):
        grading.grading_arms(task, reader.model, 2, lrs={"scratch": [1e-3]})
    with pytest.raises(ValueError, match="per_class"):
        grading.grading_arms(task, reader.model, 0, lrs={arm: [1e-3] for arm in grading.ARMS[1:]})
    with pytest.raises(ValueError, match="target accuracy"):
        grading.choose_threshold(np.ones(3), np.ones(3, dtype=bool), 1.5)
    with pytest.raises(ValueError, match="equal length"):
        grading.choose_threshold(np.ones(3), np.ones(2, dtype=bool), 0.9)
    with pytest.raises(ValueError, match="uint8"):
        grading.ink_statistics(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="N x classes"):
        grading.confidence_gap(torch.ones(3), torch.zeros(3))


def test_arms_follow_the_protocol(reader_and_task):
    reader, _, _, _, task = reader_and_task
    lrs = {"frozen + head": [1e-2], "fine-tune": [1e-3], "scratch": [3e-3, 1e-3]}
    arms = grading.grading_arms(task, reader.model, 2, lrs=lrs, batch_size=8, checkpoints=2)
    before = {name: tensor.clone() for name, tensor in reader.model.state_dict().items()}
    recorder = grading.TestRecorder(task)
    result = compare(arms, seeds=[0, 1], budget=Budget(steps=8), score_test=recorder, progress=False)
    assert list(result.arms) == list(grading.ARMS)
    table = result.table.set_index(["arm", "seed"])
    assert table.loc[("zero-shot", 0), "steps"] == 0 and (table["steps"] <= 8).all()
    assert "lr" in table.loc[("scratch", 0), "choice"] and "step" in table.loc[("scratch", 0), "choice"]
    for name, tensor in reader.model.state_dict().items():  # the arms copy the reader, never change it
        assert torch.equal(tensor, before[name]), name
    runs = recorder.by_row(result.table)
    assert set(runs) == {(arm, seed) for arm in grading.ARMS for seed in (0, 1)}
    assert runs[("scratch", 0)]["test"].shape == (len(task.test), 10)
    view = grading.teacher_view(runs, task.labels, task.val, task.test, target=0.9)
    assert ((view["checks_per_100"] >= 0) & (view["checks_per_100"] <= 100)).all()
    coverage = grading.coverage_comparison(view, Budget(steps=8))
    assert set(coverage.arms) == set(grading.ARMS)
    table = grading.comparison_table({2: result})
    assert (table.loc[table["arm"] == "scratch", "verdict"] == "reference").all()


def test_choose_threshold_and_coverage():
    confidence = np.array([0.99, 0.95, 0.9, 0.8, 0.6, 0.5])
    correct = np.array([True, True, True, False, True, False])
    assert grading.choose_threshold(confidence, correct, 1.0) == 0.9
    assert grading.choose_threshold(confidence, correct, 0.75) == 0.6  # 4 of the top 5 are right
    assert math.isinf(grading.choose_threshold(confidence, ~correct, 0.5))
    ties = np.array([0.9, 0.9, 0.5])  # a threshold cannot split the two answers at 0.9
    assert grading.choose_threshold(ties, np.array([True, False, True]), 1.0) == math.inf
    curve = grading.coverage_curve(confidence, correct)
    assert curve["coverage"].iloc[-1] == 1.0 and curve["accuracy"].iloc[0] == 1.0
    assert curve["accuracy"].iloc[-1] == pytest.approx(4 / 6)


def test_threshold_transfer_and_calibration():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7]])
    labels = torch.tensor([0, 0, 1, 0])
    moved = grading.threshold_transfer(probs, labels, probs, torch.tensor([1, 0, 1, 0]), target=1.0)
    assert moved["threshold"] == pytest.approx(0.8) and moved["source_auto_accuracy"] == 1.0
    assert moved["target_auto_accuracy"] == 0.5 and moved["n_auto"] == 2
    gap, se = grading.confidence_gap(probs, labels)
    assert gap == pytest.approx((0.9 + 0.8 + 0.6 + 0.7) / 4 - 0.75) and se > 0


def test_ink_statistics():
    images = np.zeros((2, 10, 10), dtype=np.uint8)
    images[:, 2:7, 3:5] = 200
    stats = grading.ink_statistics(images)
    assert stats["ink_share"] == pytest.approx(0.1)
    assert stats["box_height"] == pytest.approx(0.5) and stats["box_width"] == pytest.approx(0.2)


def test_reader_training_depends_on_the_seed_only(reader_and_task, tmp_path):
    reader, _, train, val, _ = reader_and_task
    again = grading.pretrained_digit_reader(train, val, "toy", epochs=1, batch_size=16, path=tmp_path / "r.safetensors",
                                            progress=False)
    for name, tensor in reader.model.state_dict().items():
        assert torch.equal(tensor, again.model.state_dict()[name]), name
