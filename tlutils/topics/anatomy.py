"""What a pre-trained vision network has learned, made visible (notebook 01).

First-layer filters and their statistics, block activations at several depths,
features pooled from any depth (:class:`MultiDepthPooling`), 2-D projections,
a network cut after a given block (:class:`TruncatedClassifier`), and a renderer
that gives MNIST digits the look of the UCI 8x8 digits.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.fx
from torch import nn

from tlutils.core.features import standardize
from tlutils.core.runtime import get_device


def first_conv_weights(model: nn.Module) -> torch.Tensor:
    """The weights of the first 2-D convolution of ``model`` (module order), as a CPU copy.

    Args:
        model: Any CNN.

    Returns:
        ``out_channels x in_channels x kH x kW`` float tensor.

    Raises:
        ValueError: the model has no ``nn.Conv2d``.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.weight.detach().float().cpu().clone()
    raise ValueError(f"{type(model).__name__} has no nn.Conv2d layer")


def _check_rgb_filters(weights: torch.Tensor) -> None:
    if weights.ndim != 4 or weights.shape[1] != 3:
        raise ValueError(f"expected RGB filters out x 3 x kH x kW, got shape {tuple(weights.shape)}")


def filter_statistics(weights: torch.Tensor) -> dict[str, float]:
    """Two numbers that tell learned first-layer filters from random ones.

    * ``colour_coherence``: mean correlation between the R, G and B slices of a filter.
      Near 1 when a filter reacts to a brightness pattern the same way in every colour;
      near 0 for random filters.
    * ``spatial_smoothness``: correlation between neighbouring taps (left-right and
      up-down) over all filters. Learned edge and blob detectors vary smoothly; random
      weights do not (about 0).

    Args:
        weights: ``out x 3 x kH x kW`` filters, e.g. from :func:`first_conv_weights`.

    Returns:
        ``{"colour_coherence": ..., "spatial_smoothness": ...}``.
    """
    _check_rgb_filters(weights)
    weights = weights.float()
    slices = weights.flatten(2)
    slices = slices - slices.mean(dim=2, keepdim=True)
    slices = slices / slices.norm(dim=2, keepdim=True).clamp_min(1e-12)
    pairs = [(0, 1), (0, 2), (1, 2)]
    coherence = torch.stack([(slices[:, a] * slices[:, b]).sum(1) for a, b in pairs]).mean()
    maps = weights.reshape(-1, *weights.shape[2:])
    left = torch.cat([maps[:, :, :-1].flatten(), maps[:, :-1, :].flatten()])
    right = torch.cat([maps[:, :, 1:].flatten(), maps[:, 1:, :].flatten()])
    smoothness = torch.corrcoef(torch.stack([left, right]))[0, 1]
    return {"colour_coherence": float(coherence), "spatial_smoothness": float(smoothness)}


def filter_mosaic(weights: torch.Tensor, ncols: int = 16, upscale: int = 6) -> np.ndarray:
    """Tile RGB filters into one image, each filter min-max scaled to [0, 1] on its own.

    Returns:
        ``H x W x 3`` float array with a one-pixel white gap between filters.
    """
    _check_rgb_filters(weights)
    count, _, height, width = weights.shape
    rows = int(np.ceil(count / ncols))
    cell_h, cell_w = height * upscale, width * upscale
    mosaic = np.ones((rows * (cell_h + 1) + 1, ncols * (cell_w + 1) + 1, 3))
    for index, kernel in enumerate(weights.float()):
        low, high = kernel.min(), kernel.max()
        scaled = ((kernel - low) / (high - low).clamp_min(1e-12)).permute(1, 2, 0).numpy()
        big = scaled.repeat(upscale, axis=0).repeat(upscale, axis=1)
        row, col = divmod(index, ncols)
        top, left = 1 + row * (cell_h + 1), 1 + col * (cell_w + 1)
        mosaic[top:top + cell_h, left:left + cell_w] = big
    return mosaic


@torch.no_grad()
def plot_filter_grid(filters: dict[str, torch.Tensor], ncols: int = 16):
    """First-layer filters of several models, one panel per model; returns the figure.

    Args:
        filters: Title -> ``out x 3 x kH x kW`` weights.
        ncols: Filters per row in each panel.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(filters), 1, figsize=(ncols * 0.5, 1.3 * len(filters) + 0.4), squeeze=False)
    for ax, (title, weights) in zip(axes[:, 0], filters.items()):
        ax.imshow(filter_mosaic(weights, ncols), interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    return fig


@torch.no_grad()
def block_activations(features: nn.Sequential, image: torch.Tensor, depths: Sequence[int],
                      device: torch.device | None = None) -> dict[int, torch.Tensor]:
    """The output of chosen blocks of a CNN body for one image.

    Args:
        features: The body as a sequence of blocks (``model.features`` for MobileNetV2).
        image: One normalised ``3 x H x W`` image tensor.
        depths: Block indices to keep (0 = first block).
        device: Defaults to :func:`~tlutils.core.runtime.get_device`.

    Returns:
        Block index -> ``channels x h x w`` activations on the CPU.
    """
    _check_depths(depths, len(features))
    device = device or get_device()
    features = features.eval().to(device)
    hidden, kept = image.unsqueeze(0).to(device), {}
    for index, block in enumerate(features):
        hidden = block(hidden)
        if index in depths:
            kept[index] = hidden[0].cpu()
        if index == max(depths):
            break
    return kept


def channel_redundancy(maps: torch.Tensor) -> float:
    """Mean absolute correlation between the spatial maps of different channels.

    High values mean the channels mostly repeat each other (as in a random network,
    where every channel is a blurred mix of the same input); low values mean each
    channel responds to something of its own.

    Args:
        maps: ``channels x h x w`` activations (at least two channels).
    """
    if maps.ndim != 3 or maps.shape[0] < 2:
        raise ValueError(f"expected channels x h x w with at least 2 channels, got {tuple(maps.shape)}")
    flat = maps.flatten(1).float()
    flat = flat - flat.mean(dim=1, keepdim=True)
    flat = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
    corr = (flat @ flat.T).abs()
    n = corr.shape[0]
    return float((corr.sum() - corr.diagonal().sum()) / (n * n - n))


def _check_depths(depths: Sequence[int], num_blocks: int) -> None:
    if len(depths) == 0 or any(not 0 <= d < num_blocks for d in depths) or len(set(depths)) != len(depths):
        raise ValueError(f"depths must be distinct block indices between 0 and {num_blocks - 1}, got {list(depths)}")


class MultiDepthPooling(nn.Module):
    """A CNN body that returns the globally average-pooled output of several blocks, concatenated.

    One forward pass gives features from every chosen depth, so a linear probe per
    depth costs one extraction, not one per depth. Blocks after the deepest chosen
    one are never run.

    Args:
        features: The body as a sequence of blocks (``model.features``).
        depths: Block indices to pool, e.g. ``[1, 3, 6, 13, 18]``.

    Attributes:
        widths: Channels of each chosen block, in the order of ``depths`` (sorted).
    """

    def __init__(self, features: nn.Sequential, depths: Sequence[int]):
        super().__init__()
        _check_depths(depths, len(features))
        self.features = features
        self.depths = sorted(int(d) for d in depths)
        self.widths = self._measure_widths()

    @torch.no_grad()
    def _measure_widths(self) -> list[int]:
        device = next(self.features.parameters()).device
        was_training = self.features.training
        widths, hidden = [], torch.zeros(1, 3, 32, 32, device=device)
        self.features.eval()
        for index, block in enumerate(self.features[:max(self.depths) + 1]):
            hidden = block(hidden)
            if index in self.depths:
                widths.append(hidden.shape[1])
        self.features.train(was_training)
        return widths

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled, hidden = [], images
        for index, block in enumerate(self.features[:max(self.depths) + 1]):
            hidden = block(hidden)
            if index in self.depths:
                pooled.append(hidden.mean(dim=(2, 3)))
        return torch.cat(pooled, dim=1)

    def extra_repr(self) -> str:
        return f"depths={self.depths}"  # part of the feature cache's key, with the weights

    def split(self, features: torch.Tensor) -> dict[int, torch.Tensor]:
        """Cut concatenated features back into one tensor per depth."""
        if features.shape[1] != sum(self.widths):
            raise ValueError(f"expected {sum(self.widths)} feature columns, got {features.shape[1]}")
        return dict(zip(self.depths, torch.split(features, self.widths, dim=1)))


def block_features(features: nn.Sequential, loader, depths: Sequence[int], cache_name: str | None = None,
                   fingerprint: str = "", device: torch.device | None = None,
                   progress: bool = True) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Pooled features of several blocks of a frozen body, cached by :func:`~tlutils.core.features.extract_features`.

    Args:
        features: The body as a sequence of blocks.
        loader: Yields ``(images, labels)``; must not shuffle.
        depths: Block indices to keep.
        cache_name: File name under ``data/cache/features/`` (start it with the notebook number).
        fingerprint: Optional extra text for the cache key; the body's weights, the depths, the
            images, the transform and the labels are part of the key already.
        device: Defaults to :func:`~tlutils.core.runtime.get_device`.
        progress: Show a progress bar.

    Returns:
        ``(features_by_depth, labels)``.
    """
    from tlutils.core.features import extract_features

    pooling = MultiDepthPooling(features, depths)
    stacked, labels = extract_features(pooling, loader, cache_name, f"{fingerprint}|depths={pooling.depths}",
                                       device=device, progress=progress)
    return pooling.split(stacked), labels


def project_2d(features: torch.Tensor | np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """A 2-D map of a feature space: PCA (linear) or t-SNE (keeps neighbourhoods).

    Features are standardised first; t-SNE runs on the first 50 principal components.

    Args:
        features: ``N x D``.
        method: ``"tsne"`` or ``"pca"``.
        seed: Random state of t-SNE (the same seed gives the same map).

    Returns:
        ``N x 2`` numpy array.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    if method not in ("tsne", "pca"):
        raise ValueError(f"unknown projection {method!r}; use 'tsne' or 'pca'")
    scaled = standardize(features)
    with threadpool_limits(limits=1):  # faster for a few hundred points (see fit_linear_probe), same result
        if method == "pca":
            return PCA(n_components=2, random_state=seed).fit_transform(scaled)
        components = min(50, scaled.shape[0], scaled.shape[1])
        reduced = PCA(n_components=components, random_state=seed).fit_transform(scaled)
        perplexity = min(30.0, (len(scaled) - 1) / 3)
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)


class TruncatedClassifier(nn.Module):
    """A CNN body cut after any block, global average pooling and a new linear head.

    The body is ``features`` and the head ``classifier``, so
    :func:`~tlutils.core.surgery.freeze`, :func:`~tlutils.core.surgery.model_blocks` and
    :func:`~tlutils.core.train.fit` work on it unchanged.

    Args:
        features: The kept blocks (e.g. ``load_mobilenet_v2().features[:14]``).
        num_classes: Outputs of the new head.
    """

    def __init__(self, features: nn.Sequential, num_classes: int):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        self.features = features
        self.classifier = nn.Linear(MultiDepthPooling(features, [len(features) - 1]).widths[0], num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images).mean(dim=(2, 3)))


def _optdigits_bitmap(image: np.ndarray, size: int = 32, threshold: int = 128) -> np.ndarray:
    """Crop to the ink, scale the height to ``size`` (keeping the aspect ratio), centre, binarise."""
    from PIL import Image

    rows, cols = np.nonzero(image >= threshold)
    if len(rows) == 0:
        return np.zeros((size, size), dtype=bool)
    crop = image[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    height, width = crop.shape
    new_width = int(np.clip(round(width * size / height), 1, size))
    scaled = np.asarray(Image.fromarray(crop).resize((new_width, size), Image.BILINEAR))
    canvas = np.zeros((size, size), dtype=np.uint8)
    left = (size - new_width) // 2
    canvas[:, left:left + new_width] = scaled
    return canvas >= threshold


def render_like_optdigits(images: np.ndarray) -> np.ndarray:
    """Re-draw MNIST digits the way the UCI optdigits were made from their scans.

    UCI's recipe: the digit's bounding box is normalised to a 32 x 32 bitmap, which is
    cut into 4 x 4 blocks whose "on" pixels are counted (0-16), giving 8 x 8 images. Here
    each MNIST digit is cropped to its ink, scaled to a height of 32 pixels (aspect ratio
    kept), centred, binarised, and counted the same way. This removes the difference in
    *acquisition* (framing, resolution, grey levels) between the two data sets; the
    writers, pens and scanners still differ.

    Args:
        images: ``N x H x W`` uint8 digits, white ink on black (MNIST).

    Returns:
        ``N x 8 x 8`` uint8 images with the counts scaled to 0-255, like
        :func:`~tlutils.core.data.load_digits` returns them.
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected N x H x W uint8 images, got {images.dtype} {images.shape}")
    counts = np.stack([_optdigits_bitmap(image).reshape(8, 4, 8, 4).sum(axis=(1, 3)) for image in images])
    return np.rint(counts * (255 / 16)).astype(np.uint8)
