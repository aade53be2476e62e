"""Tiny models and data sets shared by the unit tests."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class TinyNet(nn.Module):
    """A two-block CNN with BatchNorm and a ``classifier`` head, like the real ones."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
            nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1)),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(8, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def toy_loader(n: int = 48, num_classes: int = 3, seed: int = 0, shuffle: bool = True) -> DataLoader:
    """Images whose mean brightness encodes the class: learnable in a few steps."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    images = torch.randn(n, 1, 8, 8, generator=generator) * 0.3 + labels[:, None, None, None].float()
    return DataLoader(TensorDataset(images, labels), batch_size=8, shuffle=shuffle,
                      generator=torch.Generator().manual_seed(seed))
