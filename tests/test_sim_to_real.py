"""Unit tests of tlutils.course.sim_to_real on tiny synthetic inputs (no stamps, no network)."""

import numpy as np
import pytest
from PIL import Image

from tlutils.core.compare import Budget, compare
from tlutils.course import sim_to_real as s


def _fake_stamps(root, counts):
    for folder, n in counts.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGBA", (20, 10), (255, 0, 0, 255)).save(root / folder / f"s{i}.png")


def test_list_stamps_domains_caps_and_exclusions(tmp_path):
    _fake_stamps(tmp_path, {"vehicles/auto": 3, "vehicles/auto/cartoon": 2, "animals/cats": 5, "animals/cartoon": 2})
    Image.new("RGBA", (4, 4)).save(tmp_path / "vehicles/auto/s0_mirror.png")
    table = s.list_stamps(tmp_path, max_per_class=4)
    counts = table.groupby(["label", "domain"]).size().to_dict()
    assert counts == {("animal", "cartoon"): 2, ("animal", "photo"): 4, ("road vehicle", "cartoon"): 2,
                      ("road vehicle", "photo"): 3}
    assert not table["name"].str.contains("mirror").any()


def test_list_stamps_missing_domain_raises(tmp_path):
    _fake_stamps(tmp_path, {"vehicles/auto": 3, "animals/cats": 3, "animals/cartoon": 1})
    with pytest.raises(FileNotFoundError, match="cartoon stamps of class 'road vehicle'"):
        s.list_stamps(tmp_path)


def test_composite_shape_and_bad_input():
    cut = np.zeros((10, 20, 4), np.uint8)
    cut[..., 0], cut[..., 3] = 255, 255
    out = s.composite(cut, np.full((40, 40, 3), 7, np.uint8), size=32)
    assert out.shape == (32, 32, 3) and out[16, 16, 0] == 255 and out[0, 0, 0] == 7
    with pytest.raises(ValueError, match="RGBA"):
        s.composite(cut[..., :3], np.zeros((40, 40, 3), np.uint8))
    with pytest.raises(ValueError, match="background"):
        s.composite(cut, np.zeros((10, 10, 3), np.uint8), size=32)


def test_coral_matches_covariance_and_rejects_bad_shapes():
    rng = np.random.default_rng(0)
    source, target = rng.normal(size=(400, 3)), rng.normal(size=(400, 3)) @ np.diag([3.0, 1.0, 0.2])
    aligned = s.coral(source, target, shrink=1e-6)
    assert np.allclose(np.cov(aligned, rowvar=False), np.cov(target, rowvar=False), atol=0.05)
    with pytest.raises(ValueError, match="N x D"):
        s.coral(source, target[:, :2])
    with pytest.raises(ValueError, match="shrink"):
        s.coral(source, target, shrink=0)


def test_balanced_accuracy_and_split():
    assert s.balanced_accuracy(np.array([1, 1, 1, 1]), np.array([0, 1, 1, 1])) == 0.5
    with pytest.raises(ValueError):
        s.balanced_accuracy(np.array([1]), np.array([0, 1]))
    labels = np.array([0] * 5 + [1] * 6)
    split = s.split_domain(labels, np.arange(11), shots=2, n_val=1, seed=0)
    assert len(split.train) == 4 and len(split.val) == 2 and len(split.test) == 5
    assert not set(split.train) & set(split.test)
    with pytest.raises(ValueError, match="class"):
        s.split_domain(labels, np.arange(11), shots=4, n_val=2, seed=0)


def test_domain_arms_run_through_the_protocol():
    rng = np.random.default_rng(1)
    labels = np.tile([0, 1], 12)
    domains = np.array(["photo"] * 12 + ["cartoon"] * 12)
    signal = labels[:, None] * 2.0 + rng.normal(size=(24, 6))
    features = {"pixels": rng.normal(size=(24, 6)), "imagenet": signal, "adabn": signal}
    task = s.DomainTask(features, labels, domains, "photo", shots=2, n_val=1)
    result = compare(s.domain_arms(task), seeds=[0, 1], budget=Budget(steps=1), score_test=task.score_test,
                     progress=False)
    summary = result.summary()
    assert list(summary.index) == list(s.ARMS)
    assert summary.loc["CNN: source only", "test_mean"] > 0.8
    fig = s.plot_domains({"cartoon -> photo": result})
    assert fig.axes
    with pytest.raises(ValueError, match="target"):
        s.DomainTask(features, labels, domains, "sim")
    with pytest.raises(ValueError, match="lacks"):
        s.DomainTask({"pixels": signal}, labels, domains, "photo")
