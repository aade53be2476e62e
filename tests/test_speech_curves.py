"""Notebook 09's learning curves: frozen features + head vs a scratch CNN, and scratch speaker enrolment."""

import pytest
import torch

from tlutils.core.datasets import balanced_subset
from tlutils.course.speech_curves import PROBE, SCRATCH, curve_summary, digit_curve, scratch_enrolment_accuracy


def toy_clips(n_per_class: int = 12, classes: int = 3, seed: int = 0):
    """Spectrogram-like inputs (N x 40 bands x 20 frames) whose band energy encodes the class."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    mels = torch.randn(len(labels), 40, 20, generator=generator)
    mels[torch.arange(len(labels)), labels * 10] += 3.0
    features = mels.mean(dim=-1)
    return mels, features, labels


def test_digit_curve_trains_both_approaches_on_the_same_clips_per_size_and_seed():
    mels, features, labels = toy_clips()
    test = torch.arange(len(labels)) % 4 == 0
    pool_ids = torch.where(~test)[0]
    picked = []

    def pick(per_class, seed):
        chosen = pool_ids[torch.from_numpy(balanced_subset(labels[~test].numpy(), per_class, seed))]
        picked.append(chosen)
        return chosen

    def score(model, inputs):
        model.eval()
        with torch.no_grad():
            return float((model(inputs[test]).argmax(-1) == labels[test]).float().mean())

    runs = digit_curve(pick, [1, 3], features, mels, labels, score, probe_epochs=300, scratch_steps=20, seeds=[0, 1])
    assert runs[["labelled clips", "seed"]].values.tolist() == [[3, 0], [3, 1], [9, 0], [9, 1]]
    assert [len(p) for p in picked] == [3, 3, 9, 9] and not torch.equal(picked[0], picked[1])
    assert runs[PROBE].between(0, 1).all() and runs[SCRATCH].between(0, 1).all()
    summary = curve_summary(runs)
    assert list(summary.index) == [3, 9] and "gap SE" in summary.columns
    assert summary.loc[9, "gap"] == pytest.approx((runs[PROBE] - runs[SCRATCH])[2:].mean())
    with pytest.raises(ValueError, match="must not be empty"):
        digit_curve(pick, [], features, mels, labels, score, probe_epochs=1, scratch_steps=1, seeds=[0])


def test_scratch_enrolment_accuracy_is_a_mean_over_seeded_draws():
    mels, _, labels = toy_clips()
    test = torch.arange(len(labels)) % 3 == 0
    first = scratch_enrolment_accuracy(mels, labels, ~test, test, 2, draws=(0, 1), steps=10)
    again = scratch_enrolment_accuracy(mels, labels, ~test, test, 2, draws=(0, 1), steps=10)
    assert 0 <= first <= 1 and first == again
