"""Model anatomy: what a pre-trained network holds, and how model families compare.

Used by notebooks 01 (fundamentals) and 02 (the model zoo). Four groups of tools:

* **What a network has learned**: first-layer filters (:func:`first_conv_weights`,
  :func:`filter_statistics`, :func:`plot_filter_grid`), intermediate activations
  (:func:`block_activations`, :func:`channel_redundancy`, :func:`plot_activation_maps`),
  pooled features at several depths (:class:`MultiDepthPooling`, :func:`block_features`),
  linear probes (:func:`standardize`, :func:`fit_linear_probe`, :func:`probe_accuracy`) and
  2-D maps of a feature space (:func:`project_2d`, :func:`plot_projections`, :func:`separation_score`).
* **One task, three set-ups**: a body cut after any block with a new head
  (:class:`TruncatedClassifier`) and MNIST digits re-drawn the way the UCI digits were
  scanned (:func:`render_like_optdigits`).
* **Architecture tables**: models built on PyTorch's ``meta`` device (shapes, no memory,
  no download; :func:`build_on_meta`), :func:`count_flops`, :func:`weight_layer_depth`,
  :func:`architecture_row`, :func:`head_summary`.
* **Inference on real inputs**: :func:`imagenet_top_k`, :func:`sentence_embeddings`,
  :func:`cosine_similarity_matrix`, :func:`attention_map` and :func:`future_token_influence`
  (what a causal attention mask means, measured on a real model).

Example:
    >>> model = load_mobilenet_v2()
    >>> filter_statistics(first_conv_weights(model))["colour_coherence"]   # about 0.64
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.fx
from torch import nn

from tlutils.utils import get_device

# ===================================================================== first-layer filters


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


# ===================================================================== intermediate activations


@torch.no_grad()
def block_activations(features: nn.Sequential, image: torch.Tensor, depths: Sequence[int],
                      device: torch.device | None = None) -> dict[int, torch.Tensor]:
    """The output of chosen blocks of a CNN body for one image.

    Args:
        features: The body as a sequence of blocks (``model.features`` for MobileNetV2).
        image: One normalised ``3 x H x W`` image tensor.
        depths: Block indices to keep (0 = first block).
        device: Defaults to :func:`~tlutils.utils.get_device`.

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


def _strongest_channels(maps: torch.Tensor, count: int) -> list[int]:
    """Indices of the channels whose maps vary most over space."""
    return maps.flatten(1).std(dim=1).argsort(descending=True)[:count].tolist()


def plot_activation_maps(activations: dict[str, dict[int, torch.Tensor]], channels: int = 4):
    """Activation maps per model (column groups) and depth (rows); returns the figure.

    For every model and block the ``channels`` maps with the largest spatial variation are shown.

    Args:
        activations: Model title -> output of :func:`block_activations`.
        channels: Maps shown per model and block.
    """
    import matplotlib.pyplot as plt

    titles = list(activations)
    depths = sorted(activations[titles[0]])
    fig, axes = plt.subplots(len(depths), channels * len(titles), squeeze=False,
                             figsize=(0.95 * channels * len(titles), 1.05 * len(depths) + 0.3))
    for row, depth in enumerate(depths):
        for group, title in enumerate(titles):
            maps = activations[title][depth]
            for k, channel in enumerate(_strongest_channels(maps, channels)):
                ax = axes[row, group * channels + k]
                ax.imshow(maps[channel].numpy(), cmap="viridis")
                ax.set_xticks([]), ax.set_yticks([])
                if row == 0 and k == 0:
                    ax.set_title(title, fontsize=9, loc="left")
                if group == 0 and k == 0:
                    ax.set_ylabel(f"block {depth}\n{tuple(maps.shape[1:])}", fontsize=8)
    fig.tight_layout()
    return fig


# ===================================================================== features at several depths


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

    def split(self, features: torch.Tensor) -> dict[int, torch.Tensor]:
        """Cut concatenated features back into one tensor per depth."""
        if features.shape[1] != sum(self.widths):
            raise ValueError(f"expected {sum(self.widths)} feature columns, got {features.shape[1]}")
        return dict(zip(self.depths, torch.split(features, self.widths, dim=1)))


def block_features(features: nn.Sequential, loader, depths: Sequence[int], cache_name: str | None = None,
                   fingerprint: str = "", device: torch.device | None = None,
                   progress: bool = True) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Pooled features of several blocks of a frozen body, cached by :func:`~tlutils.features.extract_features`.

    Args:
        features: The body as a sequence of blocks.
        loader: Yields ``(images, labels)``; must not shuffle.
        depths: Block indices to keep.
        cache_name: File name under ``data/cache/features/`` (start it with the notebook number).
        fingerprint: Identifies model and data; add the depths yourself if you change them.
        device: Defaults to :func:`~tlutils.utils.get_device`.
        progress: Show a progress bar.

    Returns:
        ``(features_by_depth, labels)``.
    """
    from tlutils.features import extract_features

    pooling = MultiDepthPooling(features, depths)
    stacked, labels = extract_features(pooling, loader, cache_name, f"{fingerprint}|depths={pooling.depths}",
                                       device=device, progress=progress)
    return pooling.split(stacked), labels


# ===================================================================== linear probes and projections


def standardize(features: torch.Tensor | np.ndarray, reference: torch.Tensor | np.ndarray | None = None) -> np.ndarray:
    """Subtract the mean and divide by the standard deviation of ``reference`` (default: the features).

    Standardising a target domain with its *own* statistics, while the classifier was
    trained on source features standardised with the source's, is the simplest form of
    feature-statistics alignment: no target labels are needed.

    The scale is the reference's own, however small: the pooled features of a randomly
    initialised network can be of order 1e-9, and a fixed epsilon added to the standard
    deviation would wipe them out. Columns that are constant in the reference are only centred.

    Returns:
        A float64 numpy array of the same shape.
    """
    features = np.asarray(features, dtype=np.float64)
    reference = features if reference is None else np.asarray(reference, dtype=np.float64)
    if features.ndim != 2 or reference.ndim != 2 or features.shape[1] != reference.shape[1]:
        raise ValueError(f"expected N x D features and M x D reference, got {features.shape} and {reference.shape}")
    scale = reference.std(axis=0)
    return (features - reference.mean(axis=0)) / np.where(scale > 0, scale, 1.0)


def fit_linear_probe(features: np.ndarray, labels: np.ndarray, C: float = 0.1, max_iter: int = 1000):
    """A multinomial logistic regression on (standardised) frozen features: a linear head trained to convergence.

    scikit-learn's solver finds the exact optimum of a small convex problem, which suits the
    comparisons of notebook 01 (every probe fully trained, no learning rate to tune). For a
    head trained with :func:`~tlutils.train.fit` like any other model, on a GPU or with early
    stopping, use :func:`tlutils.features.train_linear_probe`.

    Args:
        features: ``N x D`` features, usually from :func:`standardize`.
        labels: ``N`` integer labels.
        C: Inverse L2 strength; small values regularise more (good for few examples).
        max_iter: Iterations of the L-BFGS solver.

    Returns:
        The fitted scikit-learn ``LogisticRegression`` (``.score(x, y)`` gives accuracy).
    """
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    features, labels = np.asarray(features), np.asarray(labels)
    if len(features) != len(labels) or len(np.unique(labels)) < 2:
        raise ValueError(f"need one label per example and at least two classes, got {len(features)} examples, "
                         f"{len(labels)} labels, {len(np.unique(labels))} classes")
    # A problem this small runs fastest on one thread; with several, the threads mostly wait
    # for each other (tens of times slower on a busy CPU), and the result is identical.
    with threadpool_limits(limits=1):
        return LogisticRegression(C=C, max_iter=max_iter).fit(features, labels)


def probe_accuracy(train_features, train_labels, test_features, test_labels, C: float = 0.1) -> float:
    """Test accuracy of a linear probe; both sets are standardised with the training statistics."""
    train_features, test_features = np.asarray(train_features), np.asarray(test_features)
    probe = fit_linear_probe(standardize(train_features), train_labels, C=C)
    return float(probe.score(standardize(test_features, train_features), np.asarray(test_labels)))


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


def separation_score(points: np.ndarray, labels: np.ndarray) -> float:
    """Silhouette score of the classes in a projection: near 1 = tight separate clusters, near 0 = mixed."""
    from sklearn.metrics import silhouette_score

    return float(silhouette_score(np.asarray(points), np.asarray(labels)))


def plot_projections(points: dict[str, np.ndarray], labels: np.ndarray, class_names: Sequence[str]):
    """Scatter plots of 2-D projections side by side, coloured by class; returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(points), figsize=(4.6 * len(points) + 1.6, 4.2), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, (title, xy) in zip(axes[0], points.items()):
        for c, name in enumerate(class_names):
            chosen = np.asarray(labels) == c
            ax.scatter(xy[chosen, 0], xy[chosen, 1], s=7, color=cmap(c % 10), label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([]), ax.set_yticks([])
    axes[0, -1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, markerscale=2)
    fig.tight_layout()
    return fig


# ===================================================================== one task, three set-ups


class TruncatedClassifier(nn.Module):
    """A CNN body cut after any block, global average pooling and a new linear head.

    The body is ``features`` and the head ``classifier``, so
    :func:`~tlutils.surgery.freeze`, :func:`~tlutils.surgery.model_blocks` and
    :func:`~tlutils.train.fit` work on it unchanged.

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
        :func:`~tlutils.data.load_digits` returns them.
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected N x H x W uint8 images, got {images.dtype} {images.shape}")
    counts = np.stack([_optdigits_bitmap(image).reshape(8, 4, 8, 4).sum(axis=(1, 3)) for image in images])
    return np.rint(counts * (255 / 16)).astype(np.uint8)


# ===================================================================== architecture tables


def build_on_meta(builder: Callable[[], nn.Module]) -> nn.Module:
    """Build a model on PyTorch's ``meta`` device: every tensor has a shape but no data.

    Parameter counts, layer structure and FLOPs can be read from it instantly and
    without memory, even for VGG-16's 138 M parameters; it cannot compute real outputs.

    Args:
        builder: A function returning the model, e.g. ``lambda: torchvision.models.resnet50()``.
    """
    with torch.device("meta"):
        return builder().eval()


def count_flops(model: nn.Module, input_size: int, channels: int = 3) -> int:
    """Floating-point operations of one forward pass on one ``channels x size x size`` image.

    Counted by :class:`torch.utils.flop_counter.FlopCounterMode`: a multiply-add counts
    as 2 FLOPs (papers and torchvision's ``_ops`` often quote multiply-adds, half this).
    Works on ``meta`` models.
    """
    from torch.utils.flop_counter import FlopCounterMode

    parameter = next(model.parameters())
    dummy = torch.zeros(1, channels, input_size, input_size, device=parameter.device, dtype=parameter.dtype)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(dummy)
    return int(counter.get_total_flops())


WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


class _WeightLayerTracer(torch.fx.Tracer):
    """An fx tracer that keeps every conv and linear layer whole, subclasses included
    (timm's ``Conv2dSame`` computes its padding in Python and would not trace)."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, WEIGHT_LAYERS) or super().is_leaf_module(module, qualified_name)


def weight_layer_depth(model: nn.Module) -> int:
    """Depth as architecture names count it: weight layers (conv, linear) on the longest input-to-output path.

    ResNet-50 gives 50, VGG-16 gives 16: shortcut branches run in parallel, so they do
    not add depth. The graph comes from :func:`torch.fx.symbolic_trace`.

    Raises:
        ValueError: the model cannot be traced (data-dependent control flow).
    """
    try:
        graph = _WeightLayerTracer().trace(model)
    except Exception as error:  # fx raises several types for untraceable code
        raise ValueError(f"{type(model).__name__} cannot be traced by torch.fx: {error}") from error
    depth: dict[torch.fx.Node, int] = {}
    for node in graph.nodes:
        before = max((depth[n] for n in node.all_input_nodes), default=0)
        is_weight_layer = node.op == "call_module" and isinstance(model.get_submodule(node.target), WEIGHT_LAYERS)
        depth[node] = before + int(is_weight_layer)
    return max(depth.values())


def unique_parameter_count(module: nn.Module) -> int:
    """Parameters of ``module``, counting shared (tied) tensors once."""
    seen, total = set(), 0
    for param in module.parameters():
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel()
    return total


def architecture_row(name: str, model: nn.Module, input_size: int) -> dict:
    """One row of an architecture table: depth, parameters, FLOPs and the head's share.

    Args:
        name: Shown in the ``model`` column.
        model: A classifier with a recognised head (see :func:`~tlutils.surgery.head_name`);
            a ``meta`` model is fine.
        input_size: The input resolution the model was trained at (224, or 299 for Inception-v3).
    """
    from tlutils.surgery import head_name

    head = head_name(model)
    params = unique_parameter_count(model)
    return {"model": name, "input px": input_size, "depth (weight layers)": weight_layer_depth(model),
            "params (M)": params / 1e6, "GFLOPs": count_flops(model, input_size) / 1e9, "head": head,
            "head params (%)": 100 * unique_parameter_count(getattr(model, head)) / params}


def _shares_memory(module: nn.Module, others: Sequence[torch.Tensor]) -> bool:
    """True when a parameter of ``module`` is the very same tensor as one of ``others``."""
    ids = {id(p) for p in others}
    return any(id(p) in ids for p in module.parameters())


def head_summary(model: nn.Module, head: str | None = None) -> dict:
    """Where a model's head sits and what it holds.

    Args:
        model: Any model.
        head: Attribute path of the head (e.g. ``"proj_out"``); default: :func:`~tlutils.surgery.head_name`.

    Returns:
        ``head`` (its path), ``layer`` (its last linear layer as text), ``head params``,
        ``body params`` (everything else; tied tensors counted once) and ``tied`` (True when
        the head's weights are the body's input embedding, as in GPT-style models).
    """
    from tlutils.surgery import head_name

    head = head or head_name(model)
    module = model.get_submodule(head)
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)] or [module]
    others = [p for name, p in model.named_parameters(remove_duplicate=False)
              if not (name == head or name.startswith(head + "."))]
    tied = _shares_memory(module, others)
    total, in_head = unique_parameter_count(model), unique_parameter_count(module)
    return {"head": head, "layer": repr(linears[-1]), "head params": in_head,
            "body params": total - (0 if tied else in_head), "tied": tied}


# ===================================================================== inference on real inputs


@torch.no_grad()
def imagenet_top_k(model: nn.Module, image: Any, transform: Callable, categories: Sequence[str], k: int = 5,
                   device: torch.device | None = None):
    """The ``k`` most probable ImageNet classes of one image.

    Args:
        model: An ImageNet classifier (1000 outputs).
        image: A photo in a form ``transform`` accepts (PIL image or uint8 array).
        transform: The preprocessing of the model's weights (size, crop, normalisation).
        categories: The 1000 class names.
        k: How many classes to return.
        device: Defaults to :func:`~tlutils.utils.get_device`.

    Returns:
        A pandas DataFrame with columns ``class`` and ``probability``, most probable first.
    """
    import pandas as pd

    device = device or get_device()
    logits = model.eval().to(device)(transform(image).unsqueeze(0).to(device))[0].float().cpu()
    if logits.shape[0] != len(categories):
        raise ValueError(f"the model has {logits.shape[0]} outputs but {len(categories)} category names were given")
    top = logits.softmax(-1).topk(k)
    return pd.DataFrame({"class": [categories[i] for i in top.indices], "probability": top.values.numpy()})


@torch.no_grad()
def sentence_embeddings(tokenizer: Any, encoder: nn.Module, texts: Sequence[str], max_length: int = 128,
                        device: torch.device | None = None) -> torch.Tensor:
    """Sentence vectors the sentence-transformers way: mean of the real tokens' states, L2-normalised.

    Args:
        tokenizer: The encoder's tokenizer.
        encoder: A BERT-family encoder (``last_hidden_state`` output), e.g. MiniLM.
        texts: Sentences to embed.
        max_length: Longer texts are truncated.
        device: Defaults to :func:`~tlutils.utils.get_device`.

    Returns:
        ``N x hidden`` unit-length vectors on the CPU; their dot products are cosine similarities.
    """
    from tlutils.nlp import pool_hidden_states

    if len(texts) == 0:
        raise ValueError("no texts given")
    device = device or get_device()
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
    hidden = encoder.eval().to(device)(**batch).last_hidden_state
    return nn.functional.normalize(pool_hidden_states(hidden, batch["attention_mask"], "mean"), dim=1).cpu()


def cosine_similarity_matrix(embeddings: torch.Tensor) -> torch.Tensor:
    """All pairwise cosine similarities of ``N x D`` vectors (``N x N``)."""
    units = nn.functional.normalize(embeddings.float(), dim=1)
    return units @ units.T


def _last_hidden(body: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    return body(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).last_hidden_state


@torch.no_grad()
def future_token_influence(body: nn.Module, input_ids: torch.Tensor, replacement_id: int) -> torch.Tensor:
    """How much each position's final hidden state changes when only the *last* token is replaced.

    In a causal (GPT-style) model a token cannot see later tokens, so every earlier
    position stays exactly the same; in a bidirectional (BERT-style) encoder every
    position changes.

    Args:
        body: A transformer body returning ``last_hidden_state`` (``BertModel``, or ``LlamaModel``
            = ``causal_lm.model``).
        input_ids: ``1 x n`` token ids (n >= 2).
        replacement_id: The token id put in the last position.

    Returns:
        ``n`` relative changes ``|h'_i - h_i| / |h_i|`` (the last one is the replaced token itself).
    """
    if input_ids.ndim != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] < 2:
        raise ValueError(f"expected 1 x n token ids with n >= 2, got shape {tuple(input_ids.shape)}")
    device = next(body.parameters()).device
    original = input_ids.to(device)
    changed = original.clone()
    changed[0, -1] = replacement_id
    before, after = _last_hidden(body.eval(), original)[0], _last_hidden(body, changed)[0]
    return ((after - before).norm(dim=-1) / before.norm(dim=-1).clamp_min(1e-12)).float().cpu()


@torch.no_grad()
def attention_map(model: nn.Module, input_ids: torch.Tensor, layer: int = 0) -> torch.Tensor:
    """The attention probabilities of one layer, averaged over heads (``n x n``, rows are queries).

    The model must compute attention explicitly: call
    ``model.set_attn_implementation("eager")`` first (fused kernels return no weights).
    """
    device = next(model.parameters()).device
    ids = input_ids.to(device)
    out = model.eval()(input_ids=ids, attention_mask=torch.ones_like(ids), output_attentions=True)
    if not out.attentions or out.attentions[layer] is None:
        raise ValueError("the model returned no attention weights; call model.set_attn_implementation('eager') first")
    return out.attentions[layer][0].mean(dim=0).float().cpu()
