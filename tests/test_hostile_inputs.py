"""Hostile but realistic inputs: each gives a clear error that names the problem and the fix, or a correct result.

Classes: 1 divergence (training, evaluation, probes), 2 stale feature caches, 6 silent
coercion at the public entry points, 7c a check function whose own expected value is broken.
Run with ``pytest tests/test_hostile_inputs.py -q``.
"""

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from tests.helpers import TinyNet
from tlutils.core.datasets import ArrayImageDataset, TextDataset, image_transform, images_to_tensor, text_loader
from tlutils.core.features import (
    extract_features,
    feature_cache_path,
    fit_linear_probe,
    standardize,
    train_linear_probe,
)
from tlutils.core.train import evaluate, fit
from tlutils.course.exercises import BrokenExerciseError, check_choice, check_number, solved
from tlutils.topics.speaker import ge2e_embeddings
from tlutils.topics.speech import whisper_features
from tlutils.topics.text import fit_tfidf_logreg

CPU = torch.device("cpu")


def image_loader(n: int = 48, seed: int = 0, labels: torch.Tensor | None = None) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3 if labels is None else labels
    images = torch.randn(n, 1, 8, 8, generator=generator) * 0.3 + labels.clamp(min=0)[:, None, None, None].float()
    return DataLoader(TensorDataset(images, labels), batch_size=8)


class CountingBody(nn.Module):
    """TinyNet's body, counting its forward passes (a cache hit makes none)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = TinyNet().features
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.body(x)


def extract(body, loader, name="hostile"):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        features, labels = extract_features(body, loader, name, progress=False, device=CPU)
    return features, labels, [str(w.message) for w in caught]


# ---------------------------------------------------------------- class 1: divergence


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_inputs_stop_training_with_the_causes(bad):
    loader = image_loader()
    loader.dataset.tensors[0][5, 0, 0, 0] = bad
    with pytest.raises(FloatingPointError, match="epoch 1, step 1.*NaN or infinite values in the inputs"):
        fit(TinyNet(), loader, epochs=2, progress=False, device=CPU)


def test_a_huge_learning_rate_stops_training_with_the_causes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
    with pytest.raises(FloatingPointError, match=r"epoch 1, step 3.*learning rate too high for this model \(try lr"):
        fit(
            model,
            image_loader(),
            epochs=5,
            optimizer=torch.optim.SGD(model.parameters(), lr=1e8),
            progress=False,
            device=CPU,
        )


def test_every_label_ignored_stops_training_with_the_causes():
    with pytest.raises(FloatingPointError, match=r"labels are all ignored \(-100\)"):
        fit(TinyNet(), image_loader(labels=torch.full((48,), -100)), epochs=1, progress=False, device=CPU)


def test_a_last_step_that_breaks_the_weights_is_not_returned_as_a_finished_run():
    # the loss of the only step is finite; the update it makes turns the weights infinite
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    loader = image_loader()
    loader.dataset.tensors[0].mul_(100.0)  # unnormalised inputs, large gradients
    with pytest.raises(FloatingPointError, match=r"weights of 1\.weight became NaN or infinite by epoch 1, step 1"):
        fit(
            model,
            loader,
            max_steps=1,
            optimizer=torch.optim.SGD(model.parameters(), lr=3e38),
            progress=False,
            device=CPU,
        )


def test_evaluate_refuses_a_loader_whose_labels_are_all_ignored():
    with pytest.raises(ValueError, match="every target of the loader is -100.*nothing to score"):
        evaluate(TinyNet(), image_loader(labels=torch.full((48,), -100)), CPU)


def test_evaluate_scores_only_the_labelled_examples():
    # a model that always predicts class 0; half the examples are ignored (-100)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    labels = torch.tensor([0, 1, 2, 0] * 12)
    labels[::2] = -100  # leaves labels 1, 0, 1, 0, ...: half of the scored ones are class 0
    scores = evaluate(model, image_loader(labels=labels), CPU)
    assert scores["accuracy"] == 0.5  # before: 0.25, the ignored examples counted as wrong


def test_a_non_finite_validation_score_stops_training_and_names_it():
    with pytest.raises(FloatingPointError, match="validation score val_loss is nan at epoch 1"):
        fit(
            TinyNet(),
            image_loader(),
            validate=lambda model, device: {"loss": float("nan")},
            epochs=3,
            progress=False,
            device=CPU,
        )


def test_nan_features_are_refused_by_the_torch_probe():
    features, labels = torch.randn(60, 8), torch.arange(60) % 3
    features[3, 2] = float("nan")
    with pytest.raises(ValueError, match=r"train features hold 1 NaN or infinite values \(first in row 3\).*drop"):
        train_linear_probe(features, labels, num_classes=3, epochs=2, device=CPU)


def test_infinite_features_are_refused_by_the_scikit_learn_probe():
    features, labels = np.random.default_rng(0).normal(size=(60, 8)), np.arange(60) % 3
    features[7] = np.inf
    with pytest.raises(ValueError, match=r"hold 8 NaN or infinite values \(first in row 7\)"):
        fit_linear_probe(features, labels)


def test_standardize_refuses_a_nan_reference():
    reference = np.ones((5, 3))
    reference[1, 1] = np.nan
    with pytest.raises(ValueError, match="reference features hold 1 NaN"):
        standardize(np.ones((4, 3)), reference)


def test_nan_features_from_a_backbone_are_refused_and_never_cached(temp_cache):
    loader = image_loader()
    loader.dataset.tensors[0][:] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN or infinite features for 48 of 48.*nothing was cached"):
        extract(CountingBody(), loader)
    assert not feature_cache_path("hostile").exists()


# ---------------------------------------------------------------- class 2: stale feature caches


def test_a_cache_of_20_rows_is_not_returned_for_a_7_row_input(temp_cache):
    body = CountingBody()
    extract(body, image_loader(20))
    features, labels, messages = extract(body, image_loader(7))
    assert features.shape[0] == 7 and len(labels) == 7
    assert any("(number of examples 20 -> 7, data or labels changed)" in m for m in messages)


def test_same_count_other_images_is_rebuilt(temp_cache):
    body = CountingBody()
    first, _, _ = extract(body, image_loader(seed=0))
    second, _, messages = extract(body, image_loader(seed=1))
    assert not torch.equal(first, second) and any("data or labels changed" in m for m in messages)


def test_corrected_labels_alone_are_picked_up(temp_cache):
    images = np.random.default_rng(0).integers(0, 255, (12, 28, 28), dtype=np.uint8)
    transform = image_transform(16)
    body = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    extract(body, DataLoader(ArrayImageDataset(images, np.zeros(12, int), transform), batch_size=4))
    corrected = np.arange(12) % 2
    _, labels, messages = extract(body, DataLoader(ArrayImageDataset(images, corrected, transform), batch_size=4))
    assert labels.tolist() == corrected.tolist() and any("data or labels changed" in m for m in messages)


@pytest.mark.parametrize("change", ["weight", "batchnorm statistics"])
def test_a_changed_model_is_rebuilt(temp_cache, change):
    body, loader = CountingBody(), image_loader()
    first, _, _ = extract(body, loader)
    with torch.no_grad():
        if change == "weight":
            body.body[0][0].weight.mul_(1.5)  # what fine-tuning does
        else:
            body.body[0][1].running_mean.add_(1.0)  # training mode updates buffers only
    second, _, messages = extract(body, loader)
    assert not torch.equal(first, second) and any("model weights changed" in m for m in messages)


def test_a_changed_transform_is_rebuilt(temp_cache):
    images = np.random.default_rng(0).integers(0, 255, (8, 28, 28), dtype=np.uint8)
    body = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten())
    small, _, _ = extract(body, DataLoader(ArrayImageDataset(images, np.arange(8) % 2, image_transform(16))))
    large, _, messages = extract(body, DataLoader(ArrayImageDataset(images, np.arange(8) % 2, image_transform(24))))
    assert small.shape[1] == 2 * 14 * 14 and large.shape[1] == 2 * 22 * 22
    assert any("data or labels changed" in m for m in messages)


def test_another_subset_of_the_same_data_is_rebuilt(temp_cache):
    dataset = image_loader(30).dataset
    body = CountingBody()
    extract(body, DataLoader(Subset(dataset, range(10)), batch_size=8))
    _, labels, messages = extract(body, DataLoader(Subset(dataset, range(10, 20)), batch_size=8))
    assert torch.equal(labels, dataset.tensors[1][10:20]) and any("data or labels changed" in m for m in messages)


def test_an_unchanged_input_is_a_cache_hit(temp_cache):
    body, loader = CountingBody(), image_loader()
    first, _, _ = extract(body, loader)
    calls = body.calls
    again, _, messages = extract(body, loader)
    assert body.calls == calls and torch.equal(first, again) and messages == []


def test_a_cache_that_cannot_be_written_keeps_the_features_and_warns(temp_cache, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", disk_full)
    body, loader = CountingBody(), image_loader()
    features, labels, messages = extract(body, loader)
    assert len(features) == 48 and torch.isfinite(features).all()
    assert torch.equal(labels, torch.arange(48) % 3)
    assert any("could not write the feature cache" in m and "not cached" in m for m in messages), messages
    assert not list(temp_cache.rglob("*.safetensors")) and not list(temp_cache.rglob("*.tmp"))


def test_a_list_of_batches_is_hashed_batch_by_batch(temp_cache):
    body = CountingBody()
    batches = [(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])) for _ in range(3)]
    extract(body, batches)
    batches[2][1][0] = 2  # a corrected label in the last batch
    _, labels, messages = extract(body, batches)
    assert labels[8] == 2 and any("data or labels changed" in m for m in messages)


def test_a_one_shot_generator_cannot_be_cached(temp_cache):
    batches = ((torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])) for _ in range(2))
    with pytest.raises(ValueError, match="read twice.*pass list\\(batches\\), or cache_name=None"):
        extract(CountingBody(), batches)


def test_a_plain_function_backbone_warns_that_its_weights_are_invisible(temp_cache):
    def backbone(images):
        return images.flatten(1)

    _, _, messages = extract(backbone, image_loader())
    assert any("cannot see the weights" in m and "fingerprint=" in m for m in messages)


def test_a_closure_over_a_model_is_hashed_through_the_model(temp_cache):
    body = CountingBody()
    first, _, _ = extract(lambda images: body(images), image_loader())
    with torch.no_grad():
        body.body[1][0].bias.add_(1.0)
    second, _, messages = extract(lambda images: body(images), image_loader())
    assert not torch.equal(first, second) and any("model weights changed" in m for m in messages)


@pytest.mark.parametrize("name", ["../escape", "/tmp/absolute", "sub/dir", "back\\slash", "", "..", ".hidden"])
def test_a_cache_name_cannot_escape_the_cache_folder(temp_cache, name):
    with pytest.raises(ValueError, match="cache_name must be a plain file name.*cache_name=None to disable"):
        extract(CountingBody(), image_loader(), name)
    assert not any(temp_cache.parent.rglob("*.safetensors"))


# ---------------------------------------------------------------- class 6: silent coercion

IMAGES = np.random.default_rng(0).integers(0, 255, (6, 28, 28), dtype=np.uint8)


@pytest.mark.parametrize(
    "labels, error, message",
    [
        ([0, 1, 1.7, 2, 0, 1], ValueError, r"whole numbers \(class indices\), got 1.7 at index 2"),
        ([0, 1, float("nan"), 2, 0, 1], ValueError, "whole numbers .*got nan at index 2"),
        (["cat", "dog"] * 3, TypeError, "got str values such as 'cat'; map names to numbers"),
        ([0, 1, -1, 2, 0, 1], ValueError, "got -1 at index 2; remap the classes to start at 0"),
        (np.eye(6, 3), ValueError, r"1-D sequence of class indices, got shape \(6, 3\); for one-hot labels"),
    ],
    ids=["fraction", "nan", "strings", "negative", "one-hot"],
)
def test_labels_that_a_cast_would_change_are_refused(labels, error, message):
    with pytest.raises(error, match=message):
        ArrayImageDataset(IMAGES, labels)


def test_whole_number_float_labels_are_kept_exactly():
    dataset = ArrayImageDataset(IMAGES, np.array([0.0, 1.0, 2.0, 2.0, 1.0, 0.0]))
    assert dataset.labels.dtype == np.int64 and dataset.labels.tolist() == [0, 1, 2, 2, 1, 0]


@pytest.mark.parametrize(
    "texts, error, message",
    [
        ("a single review", TypeError, r"single string; pass a list of texts, e.g. \['a single review'\]"),
        ([], ValueError, "texts is empty: pass at least one text"),
        (["good", None, "bad"], TypeError, r"texts\[1\] is NoneType None, not a string; drop or fill"),
        (["good", float("nan")], TypeError, r"texts\[1\] is float nan.*fillna"),
    ],
    ids=["one-string", "empty", "none-inside", "nan-inside"],
)
def test_texts_must_be_a_non_empty_list_of_strings(texts, error, message):
    from tests.test_data import WordTokenizer

    with pytest.raises(error, match=message):
        TextDataset(texts, None, WordTokenizer())


def test_text_loader_refuses_a_single_string_instead_of_a_list():
    from tests.test_data import WordTokenizer

    with pytest.raises(TypeError, match="split into one text per character"):
        text_loader("great film", None, WordTokenizer())


def test_tfidf_baseline_refuses_float_labels():
    with pytest.raises(ValueError, match="whole numbers"):
        fit_tfidf_logreg(["good film", "bad film"], [0.5, 1.5])


def test_a_channel_first_image_is_refused_with_the_transpose_to_apply():
    image = np.zeros((3, 28, 28), np.uint8)
    with pytest.raises(ValueError, match=r"channel-first \(C x H x W\); transpose it with image.transpose\(1, 2, 0\)"):
        image_transform(32)(image)


@pytest.mark.parametrize("entry", ["images_to_tensor", "ArrayImageDataset"])
def test_a_channel_first_batch_is_refused_with_the_transpose_to_apply(entry):
    batch = np.zeros((4, 3, 28, 28), np.uint8)
    with pytest.raises(
        ValueError,
        match=r"channel-first \(N x C x H x W\); transpose it with "
        r"images.transpose\(0, 2, 3, 1\)",
    ):
        images_to_tensor(batch) if entry == "images_to_tensor" else ArrayImageDataset(batch, [0, 1, 2, 0])


def test_an_alpha_channel_batch_is_refused_with_the_slice_to_apply():
    with pytest.raises(ValueError, match=r"drop the alpha channel with images\[\.\.\., :3\]"):
        images_to_tensor(np.zeros((2, 28, 28, 4), np.uint8))


def test_flat_image_rows_are_refused_with_the_reshape_to_apply():
    with pytest.raises(ValueError, match=r"got shape \(6, 784\); reshape flat rows first"):
        ArrayImageDataset(IMAGES.reshape(6, -1), np.arange(6) % 2)


def test_float_targets_in_training_are_refused():
    loader = DataLoader(TensorDataset(torch.randn(8, 1, 8, 8), torch.tensor([0.0, 1.5] * 4)), batch_size=4)
    with pytest.raises(ValueError, match="float32 numbers such as 0.0, but cross-entropy needs integer class indices"):
        fit(TinyNet(), loader, epochs=1, progress=False, device=CPU)


def test_negative_targets_in_training_are_refused():
    loader = DataLoader(TensorDataset(torch.randn(8, 1, 8, 8), torch.tensor([0, -1] * 4)), batch_size=4)
    with pytest.raises(ValueError, match="a target label is -1; class labels run from 0 to 2.*remap"):
        fit(TinyNet(), loader, epochs=1, progress=False, device=CPU)


def test_a_probe_with_too_few_classes_names_the_right_number():
    with pytest.raises(ValueError, match="num_classes=3 but the train labels go up to 4; pass num_classes=5"):
        train_linear_probe(torch.randn(10, 4), torch.arange(10) % 5, num_classes=3)


def test_a_probe_refuses_float_labels():
    with pytest.raises(ValueError, match=r"train labels must be whole numbers .*got 0.5 at index 0"):
        train_linear_probe(torch.randn(10, 4), torch.arange(10) % 2 + 0.5, num_classes=2)


def test_a_probe_checks_its_validation_split_too():
    with pytest.raises(ValueError, match=r"N x D features and N labels, got \(5, 4\) and 4 labels \(val\)"):
        train_linear_probe(torch.randn(10, 4), torch.arange(10) % 2, 2, val=(torch.randn(5, 4), torch.zeros(4)))


def test_clips_lengths_and_labels_must_line_up():
    with pytest.raises(ValueError, match="N x samples waves with N lengths and N labels.*3 lengths and 4 labels"):
        ge2e_embeddings(None, torch.zeros(4, 1600), torch.full((3,), 1600), torch.zeros(4, dtype=torch.long))


def test_whisper_features_need_a_batch_of_log_mels():
    with pytest.raises(ValueError, match=r"N x 80 x frames log-mels.*got \(80, 100\).*whisper_log_mel"):
        whisper_features(None, torch.zeros(80, 100), torch.zeros(80, dtype=torch.long))


# ---------------------------------------------------------------- class 7c: a broken check is not the learner's fault


@pytest.mark.parametrize(
    "expected",
    [None, float("nan"), float("inf"), "three", [1, 2], True, np.array([1.0, 2.0])],
    ids=["none", "nan", "inf", "text", "list", "bool", "array"],
)
def test_check_number_with_a_broken_expected_value_blames_the_exercise(expected, capsys):
    with pytest.raises(BrokenExerciseError, match="This exercise's check is broken, not your answer: its expected"):
        check_number(3, expected)
    assert "Not quite" not in capsys.readouterr().out


def test_check_number_with_a_broken_tolerance_blames_the_exercise():
    with pytest.raises(BrokenExerciseError, match=r"tolerance rel_tol=-0.1 is not a number in \[0, 1\)"):
        check_number(3, 3, rel_tol=-0.1)


@pytest.mark.parametrize("expected", [None, float("nan"), ["a", "b"], "  "], ids=["none", "nan", "list", "blank"])
def test_check_choice_with_a_broken_expected_value_blames_the_exercise(expected, capsys):
    with pytest.raises(BrokenExerciseError, match="check is broken, not your answer"):
        check_choice("none", expected)
    assert "Correct" not in capsys.readouterr().out


def test_checks_accept_numpy_and_torch_scalars_and_still_judge_the_learner(capsys):
    assert check_number(2.5, np.float32(2.5)) and check_number(4, torch.tensor(4))
    assert check_choice("3", np.int64(3)) and not check_number(3, math.pi)
    assert capsys.readouterr().out.splitlines() == ["Correct!", "Correct!", "Correct!", "Not quite: 3 is not right."]


def test_a_solution_is_checked_without_printing_and_a_wrong_one_fails_loudly(capsys):
    def check_exercise(answer):
        return check_number(answer, 42, hint="six times seven")

    assert solved(check_exercise, 42)
    assert capsys.readouterr().out == ""
    with pytest.raises(AssertionError, match="does not pass its own check: Not quite: 41 .*six times seven"):
        solved(check_exercise, 41)
    with pytest.raises(AssertionError, match="Not answered yet"):
        solved(check_exercise, None)


def test_a_check_of_several_answers_is_solved_with_all_of_them(capsys):
    def check_exercise(first, second):
        return check_number(first, 0.8) and check_number(second, 0.125)

    assert solved(check_exercise, 0.8, 0.125)
    assert capsys.readouterr().out == ""
    with pytest.raises(AssertionError, match="does not pass its own check"):
        solved(check_exercise, 0.8, 0.5)
