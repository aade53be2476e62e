"""Cached feature extraction: built once, reused, rebuilt when stale or damaged."""

import pytest
import torch

from tests.helpers import TinyNet, toy_loader
from tlutils.core.features import LinearProbe, extract_features, feature_loader, train_linear_probe
from tlutils.core.train import fit


class CountingBackbone(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = TinyNet().features
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.body(x)


def test_features_are_cached_and_reused(temp_cache):
    backbone, loader = CountingBackbone(), toy_loader(shuffle=False)
    features, labels = extract_features(backbone, loader, "toy", fingerprint="tiny|toy", progress=False)
    calls = backbone.calls
    again, again_labels = extract_features(backbone, loader, "toy", fingerprint="tiny|toy", progress=False)
    assert features.shape == (48, 8) and backbone.calls == calls
    assert torch.equal(features, again) and torch.equal(labels, again_labels)


def test_stale_fingerprint_is_rebuilt(temp_cache):
    backbone, loader = CountingBackbone(), toy_loader(shuffle=False)
    extract_features(backbone, loader, "toy", fingerprint="v1", progress=False)
    calls = backbone.calls
    with pytest.warns(UserWarning, match="other data or another model"):
        extract_features(backbone, loader, "toy", fingerprint="v2", progress=False)
    assert backbone.calls == 2 * calls


def test_corrupted_cache_is_detected_and_rebuilt(temp_cache):
    backbone, loader = CountingBackbone(), toy_loader(shuffle=False)
    features, _ = extract_features(backbone, loader, "toy", fingerprint="v1", progress=False)
    path = temp_cache / "features" / "toy.safetensors"
    path.write_bytes(path.read_bytes()[:64])
    with pytest.warns(UserWarning, match="damaged"):
        rebuilt, _ = extract_features(backbone, loader, "toy", fingerprint="v1", progress=False)
    assert torch.equal(features, rebuilt)


def test_head_trains_on_cached_features(temp_cache):
    features, labels = extract_features(TinyNet().features, toy_loader(shuffle=False), None, progress=False)
    head = torch.nn.Sequential()
    head.classifier = torch.nn.Linear(features.shape[1], 3)
    history = fit(head, feature_loader(features, labels, 16, shuffle=True, seed=0), epochs=5, lr=0.05,
                  seed=0, progress=False)
    assert history.train_loss[-1] < history.train_loss[0]


def test_linear_probe_standardises_learns_and_repeats():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    # class information in a feature 1000x larger than the others: standardising makes the scale irrelevant
    features = torch.randn(60, 8, generator=generator)
    features[:, 0] = 1000.0 * labels + 100.0 * torch.randn(60, generator=generator)
    probe, history = train_linear_probe(features, labels, num_classes=3, epochs=100, device="cpu")
    assert isinstance(probe, LinearProbe) and not probe.training
    assert [name for name, _ in probe.named_parameters()] == ["head.weight", "head.bias"]  # statistics are buffers
    assert (probe(features).argmax(1) == labels).float().mean() > 0.9
    assert history.train_loss[-1] < history.train_loss[0]
    again, _ = train_linear_probe(features, labels, num_classes=3, epochs=100, device="cpu")
    assert torch.equal(probe.head.weight, again.head.weight)  # seeded
    with pytest.raises(ValueError, match="N x D features and N labels"):
        train_linear_probe(features, labels[:10], num_classes=3)


class CountingTransform:
    """Turns a uint8 image into a 1 x H x W float tensor, counting its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, image):
        self.calls += 1
        return torch.from_numpy(image).float()[None] / 255


def test_the_data_key_of_a_project_data_set_is_hashed_without_running_its_transform():
    import numpy as np
    from torch.utils.data import DataLoader

    from tlutils.core.datasets import ArrayImageDataset
    from tlutils.core.features import data_fingerprint

    images = np.random.default_rng(0).integers(0, 255, (10, 8, 8), dtype=np.uint8)
    transform = CountingTransform()
    count, key = data_fingerprint(DataLoader(ArrayImageDataset(images, np.arange(10) % 2, transform), batch_size=4))
    assert count == 10 and transform.calls == 0
    relabelled = ArrayImageDataset(images, (np.arange(10) + 1) % 2, transform)
    assert data_fingerprint(DataLoader(relabelled, batch_size=4))[1] != key
    dropped = DataLoader(ArrayImageDataset(images, np.arange(10) % 2, transform), batch_size=4, drop_last=True)
    assert data_fingerprint(dropped)[0] == 8


def test_the_model_key_follows_the_weights_and_buffers_not_the_object():
    from tlutils.core.features import model_fingerprint

    torch.manual_seed(0)
    first = TinyNet().features
    torch.manual_seed(0)
    same = TinyNet().features
    assert model_fingerprint(first) == model_fingerprint(same)
    same[0][1].num_batches_tracked += 1
    assert model_fingerprint(first) != model_fingerprint(same)


def test_the_default_empty_fingerprint_still_keys_on_data_and_model(temp_cache):
    backbone = CountingBackbone()
    small, _ = extract_features(backbone, toy_loader(n=20, shuffle=False), "toy", progress=False)
    with pytest.warns(UserWarning, match=r"number of examples 20 -> 7"):
        fresh, labels = extract_features(backbone, toy_loader(n=7, shuffle=False), "toy", progress=False)
    assert fresh.shape == (7, 8) and len(labels) == 7
