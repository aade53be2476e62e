"""Computer vision beyond whole-image labels: error analysis, Grad-CAM, detection, segmentation.

The pieces behind notebooks 05 and 06:

* error analysis of a classifier: the most confused class pairs and the most
  confident mistakes, and Grad-CAM heat maps that show where a CNN looked;
* a medical-imaging-style task: :func:`make_lesion_task` paints clearly synthetic
  lesions onto patches of a real retina photo; :func:`load_medical_task` returns it,
  or the real BreastMNIST ultrasound set when you are online, in the same format;
* object detection: a Faster R-CNN whose backbone is the ImageNet MobileNetV2
  (:func:`build_mobilenet_faster_rcnn`), trained on real aerial tree-crown boxes
  (:func:`load_tree_tiles`), scored by average precision at IoU 0.5;
* segmentation: a U-Net-style decoder on the MobileNetV2 encoder
  (:func:`build_mobilenet_unet`), trained on composited scenes whose masks come
  from real Fashion-MNIST items (:func:`make_composite_scenes`), scored by IoU.

Example:
    >>> model = build_mobilenet_faster_rcnn(num_classes=2, pretrained=True)
    >>> unet = build_mobilenet_unet(num_classes=1, pretrained=True)
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tlutils.assets import resolve
from tlutils.data import IMAGENET_MEAN, IMAGENET_STD
from tlutils.surgery import set_train_mode
from tlutils.train import History
from tlutils.utils import set_seed

LESION_CLASSES = ("healthy", "lesion")
#: BreastMNIST's own label order (MedMNIST v2): 0 = malignant, 1 = normal or benign.
BREASTMNIST_CLASSES = ("malignant", "normal/benign")
MEDICAL_SOURCES = ("retina_synthetic", "breastmnist")
#: The aerial tiles in the deepforest package: file stem -> NEON site.
TREE_TILES = {
    "2019_YELL_2_528000_4978000_image_crop2": "YELL",
    "2019_YELL_2_541000_4977000_image_crop": "YELL",
    "OSBS_029": "OSBS",
    "SOAP_061": "SOAP",
}
#: MobileNetV2 ``features`` indices whose outputs feed the U-Net decoder
#: (strides 2, 4, 8, 16 and 32) and their channel counts.
UNET_SKIPS = (1, 3, 6, 13, 18)
UNET_SKIP_CHANNELS = (16, 24, 32, 96, 1280)


# ================================================================== error analysis


def most_confused_pairs(matrix: np.ndarray, class_names: Sequence[str], k: int = 5) -> list[tuple[str, str, int]]:
    """The ``k`` largest off-diagonal cells of a confusion matrix.

    Args:
        matrix: ``C x C`` counts, rows = true class, columns = prediction.
        class_names: The ``C`` class names.
        k: How many pairs to return.

    Returns:
        ``(true_name, predicted_name, count)`` tuples, largest count first; pairs
        with a count of zero are left out.
    """
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] != len(class_names):
        raise ValueError(f"expected a {len(class_names)} x {len(class_names)} matrix, got shape {matrix.shape}")
    off_diagonal = matrix * (1 - np.eye(len(matrix), dtype=matrix.dtype))
    order = np.argsort(-off_diagonal, axis=None, kind="stable")[:k]
    pairs = [(class_names[i], class_names[j], int(off_diagonal[i, j]))
             for i, j in zip(*np.unravel_index(order, matrix.shape))]
    return [pair for pair in pairs if pair[2] > 0]


def confident_mistakes(logits: torch.Tensor, targets: torch.Tensor, k: int = 8) -> list[dict]:
    """The ``k`` wrong predictions the model was most sure of.

    These are the most instructive examples to look at: label noise, classes that
    truly look alike, or a shortcut the model learned.

    Args:
        logits: ``N x C`` scores.
        targets: ``N`` true labels.
        k: How many mistakes to return.

    Returns:
        One dict per mistake, most confident first: ``index``, ``true``,
        ``predicted`` and ``probability`` (of the predicted class).
    """
    if len(logits) != len(targets):
        raise ValueError(f"{len(logits)} rows of logits but {len(targets)} targets")
    probabilities = torch.as_tensor(logits).float().softmax(-1)
    confidence, predicted = probabilities.max(-1)
    targets = torch.as_tensor(targets)
    wrong = torch.nonzero(predicted != targets).flatten()
    wrong = wrong[confidence[wrong].argsort(descending=True)][:k]
    return [{"index": int(i), "true": int(targets[i]), "predicted": int(predicted[i]),
             "probability": float(confidence[i])} for i in wrong]


# ================================================================== Grad-CAM


def grad_cam(model: nn.Module, images: torch.Tensor, target_layer: nn.Module,
             class_index: int | Sequence[int] | None = None) -> torch.Tensor:
    """Grad-CAM heat maps (Selvaraju et al., 2017): where the network looked for a class.

    The activations ``A`` of ``target_layer`` are weighted by the spatial mean of
    the gradient of the class score with respect to them, summed over channels and
    passed through a ReLU; the map is upsampled to the image size and scaled to
    [0, 1] per image.

    Args:
        model: A classifier returning ``N x C`` logits; it is put in eval mode.
        images: ``N x 3 x H x W`` normalised inputs (on the model's device).
        target_layer: The module whose output is explained, usually the last
            convolutional block (``model.features[-1]`` for MobileNetV2); an earlier
            block gives a finer but less semantic map.
        class_index: The class to explain, one per image, or ``None`` for the
            predicted class.

    Returns:
        ``N x H x W`` float tensor in [0, 1], on the CPU.
    """
    captured = {}
    handle = target_layer.register_forward_hook(lambda module, inputs, output: captured.update(a=output))
    try:
        model.eval()
        inputs = images.detach().clone().requires_grad_(True)  # works with a fully frozen model too
        logits = model(inputs)
    finally:
        handle.remove()
    if "a" not in captured:
        raise ValueError("target_layer was not called during the forward pass; pass a module of this model")
    activations = captured["a"]
    if class_index is None:
        chosen = logits.argmax(-1)
    else:
        chosen = torch.as_tensor(class_index, device=logits.device).expand(len(logits))
    score = logits.gather(1, chosen[:, None]).sum()
    gradients, = torch.autograd.grad(score, activations)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activations).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    low = cam.flatten(1).min(1).values[:, None, None]
    high = cam.flatten(1).max(1).values[:, None, None]
    return ((cam - low) / (high - low).clamp_min(1e-8)).detach().cpu()


def pointing_game(heatmaps: torch.Tensor, masks: np.ndarray, tolerance: float = 0.0) -> float:
    """Share of images whose heat-map maximum falls on the object (Zhang et al.'s "pointing game").

    Args:
        heatmaps: ``N x H x W`` maps, e.g. from :func:`grad_cam`.
        masks: ``N x H x W`` boolean masks of where the evidence really is.
        tolerance: A peak up to this many pixels outside the mask still counts
            (coarse maps cannot point more precisely than their cell size).

    Returns:
        The hit rate in [0, 1].
    """
    from scipy.ndimage import distance_transform_edt

    heatmaps, masks = np.asarray(heatmaps), np.asarray(masks).astype(bool)
    if heatmaps.shape != masks.shape:
        raise ValueError(f"heatmaps {heatmaps.shape} and masks {masks.shape} must have the same shape")
    if not masks.reshape(len(masks), -1).any(1).all():
        raise ValueError("every mask needs at least one pixel: pass only images that contain the object")
    targets = np.stack([distance_transform_edt(~mask) <= tolerance for mask in masks])
    peaks = heatmaps.reshape(len(heatmaps), -1).argmax(1)
    return float(targets.reshape(len(targets), -1)[np.arange(len(targets)), peaks].mean())


def pointing_chance(masks: np.ndarray, tolerance: float = 0.0) -> float:
    """The pointing-game score of a heat map whose peak lands at a uniformly random pixel.

    It is the mean share of the image within ``tolerance`` pixels of the mask: the
    baseline that :func:`pointing_game` must beat for a map to mean anything.
    """
    from scipy.ndimage import distance_transform_edt

    masks = np.asarray(masks).astype(bool)
    return float(np.mean([(distance_transform_edt(~mask) <= tolerance).mean() for mask in masks]))


def show_heatmaps(images: Sequence[np.ndarray], heatmaps: torch.Tensor, titles: Sequence[str] | None = None,
                  alpha: float = 0.45, size: float = 1.9):
    """Each image above its heat-map overlay; returns the figure.

    Args:
        images: ``uint8`` images at the heat maps' size (``H x W`` or ``H x W x 3``).
        heatmaps: ``N x H x W`` maps in [0, 1].
        titles: One title per image.
        alpha: Opacity of the heat map over the image.
        size: Inches per panel.
    """
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(size * n, size * 2.1), squeeze=False)
    for i, (image, heatmap) in enumerate(zip(images, np.asarray(heatmaps))):
        image = np.asarray(image)
        cmap = "gray" if image.ndim == 2 else None
        axes[0, i].imshow(image, cmap=cmap)
        axes[1, i].imshow(image, cmap=cmap)
        axes[1, i].imshow(heatmap, cmap="jet", alpha=alpha, vmin=0, vmax=1)
        if titles is not None:
            axes[0, i].set_title(titles[i], fontsize=8)
        axes[0, i].axis("off")
        axes[1, i].axis("off")
    axes[1, 0].set_title("Grad-CAM", fontsize=8, loc="left")
    fig.tight_layout()
    return fig


# ================================================================== a medical-imaging-style task


class MedicalData(NamedTuple):
    """Images and labels of a medical-style task (unpacks like :class:`tlutils.data.ImageData`).

    Attributes:
        images: ``N x H x W x 3`` (or ``N x H x W``) ``uint8``.
        labels: ``N`` ``int64`` labels.
        class_names: Names of the classes.
        masks: ``N x H x W`` boolean lesion masks where known (synthetic task), else ``None``.
        description: One line saying what the data is, synthetic or real.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    masks: np.ndarray | None
    description: str


def _fundus_mask(photo: np.ndarray, threshold: int = 40) -> np.ndarray:
    """Pixels inside the round fundus (the black frame around it is left out)."""
    return photo.astype(np.int32).sum(-1) > 3 * threshold


def _patch_corners(inside: np.ndarray, rows: tuple[int, int], crop: int, n: int,
                   rng: np.random.Generator) -> list[tuple[int, int]]:
    """Random top-left corners of ``crop`` px squares that lie fully inside the fundus."""
    corners, tries = [], 0
    while len(corners) < n:
        tries += 1
        if tries > 200 * n:
            raise ValueError(f"could not place {n} patches of {crop} px in rows {rows}; use smaller patches")
        y = int(rng.integers(rows[0], rows[1] - crop))
        x = int(rng.integers(0, inside.shape[1] - crop))
        if inside[y, x] and inside[y + crop - 1, x] and inside[y, x + crop - 1] and inside[y + crop - 1, x + crop - 1]:
            corners.append((y, x))
    return corners


def _paint_lesion(patch: np.ndarray, rng: np.random.Generator, radius_range: tuple[float, float],
                  strength_range: tuple[float, float]) -> np.ndarray:
    """Darken a soft round spot (a haemorrhage-like blob); return its boolean mask."""
    size = patch.shape[0]
    radius = rng.uniform(*radius_range) * size
    cy, cx = rng.uniform(radius + 1, size - radius - 1, size=2)
    yy, xx = np.mgrid[:size, :size]
    distance = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / radius
    # A smooth edge (no sharp ring): full strength inside 0.6 r, fading to zero at 1.3 r.
    weight = np.clip((1.3 - distance) / 0.7, 0, 1) * rng.uniform(*strength_range)
    darker = patch.astype(np.float32) * np.array([0.55, 0.35, 0.35], np.float32)  # dark red, like blood
    blended = patch * (1 - weight[..., None]) + darker * weight[..., None]
    patch[:] = np.clip(blended, 0, 255).astype(np.uint8)
    return distance <= 1.0


def make_lesion_task(photo: np.ndarray, n_images: int, size: int = 64, crop: int = 160,
                     split: str = "train", seed: int = 0, lesion_fraction: float = 0.5,
                     radius_range: tuple[float, float] = (0.06, 0.12),
                     strength_range: tuple[float, float] = (0.35, 0.7)) -> MedicalData:
    """A SYNTHETIC lesion-detection task on patches of a real fundus photo.

    Random ``crop`` px patches of the real retina photo are resized to ``size`` px;
    in ``lesion_fraction`` of them a soft, dark-red round spot is painted (a crude
    stand-in for a retinal haemorrhage). The label says whether a spot was painted;
    the masks say where. The photo is real, the lesions are not: results on this
    task say nothing about clinical performance.

    Training and test patches come from different parts of the photo (upper 55 %
    vs lower 45 %), so no test pixel was seen during training.

    Args:
        photo: The real retina photo, ``H x W x 3`` ``uint8`` (``load_photos(["retina"])``).
        n_images: How many patches.
        size: Output size in pixels.
        crop: Patch size in the photo's pixels before resizing.
        split: ``"train"`` (upper part of the photo) or ``"test"`` (lower part).
        seed: Random seed.
        lesion_fraction: Share of patches with a lesion.
        radius_range: Lesion radius as a fraction of the patch size.
        strength_range: How strongly the spot darkens the tissue (0 = invisible).

    Returns:
        :class:`MedicalData` with class names ``("healthy", "lesion")`` and masks.
    """
    from PIL import Image

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
        raise ValueError(f"photo must be an H x W x 3 uint8 array, got {photo.shape} {photo.dtype}")
    rng = np.random.default_rng(seed)
    cut = int(photo.shape[0] * 0.55)
    rows = (0, cut) if split == "train" else (cut, photo.shape[0])
    corners = _patch_corners(_fundus_mask(photo), rows, crop, n_images, rng)
    labels = (rng.permutation(n_images) < round(lesion_fraction * n_images)).astype(np.int64)
    images = np.empty((n_images, size, size, 3), np.uint8)
    masks = np.zeros((n_images, size, size), bool)
    for i, (y, x) in enumerate(corners):
        patch = np.asarray(Image.fromarray(photo[y:y + crop, x:x + crop]).resize((size, size), Image.BILINEAR))
        images[i] = patch
        if labels[i]:
            masks[i] = _paint_lesion(images[i], rng, radius_range, strength_range)
    return MedicalData(images, labels, list(LESION_CLASSES), masks,
                       f"SYNTHETIC lesions painted on patches of a real retina photo ({split})")


def _breastmnist(split: str) -> MedicalData:
    """Read one split of the real BreastMNIST (64 px) npz file."""
    with np.load(resolve("breastmnist").file(".npz"), allow_pickle=False) as arrays:
        images = arrays[f"{split}_images"].astype(np.uint8)
        labels = arrays[f"{split}_labels"].reshape(-1).astype(np.int64)
    return MedicalData(images, labels, list(BREASTMNIST_CLASSES), None,
                       f"REAL breast ultrasound images (BreastMNIST, MedMNIST v2), {split} split")


def load_medical_task(source: str = "retina_synthetic", split: str = "train", n_images: int = 200,
                      size: int = 64, seed: int = 0) -> MedicalData:
    """One loader for the medical-imaging-style task, synthetic offline or real online.

    Args:
        source: ``"retina_synthetic"`` (offline: synthetic lesions on a real retina
            photo, see :func:`make_lesion_task`) or ``"breastmnist"`` (online once:
            real breast ultrasound, malignant vs normal/benign, downloaded into the cache).
        split: ``"train"`` or ``"test"``.
        n_images: Patches to make (synthetic source only; BreastMNIST returns its whole split).
        size: Patch size in pixels (synthetic source only; BreastMNIST images are 64 px).
        seed: Random seed of the synthetic patches.

    Returns:
        :class:`MedicalData`; its ``description`` says whether the data is real.
    """
    from tlutils.data import load_photos

    if source not in MEDICAL_SOURCES:
        raise ValueError(f"unknown medical source {source!r}; choose one of {MEDICAL_SOURCES}")
    if source == "breastmnist":
        return _breastmnist(split)
    photo = load_photos(["retina"])["retina"]
    return make_lesion_task(photo, n_images, size=size, split=split, seed=seed)


# ================================================================== tensors for small in-memory sets


def images_to_tensor(images: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
                     std: Sequence[float] = IMAGENET_STD, size: int | None = None) -> torch.Tensor:
    """Turn ``uint8`` images (``N x H x W`` grey or ``N x H x W x 3``) into a normalised float batch.

    Args:
        images: The images.
        mean: Per-channel mean of the pre-trained model.
        std: Per-channel standard deviation.
        size: Resize to ``size x size`` (bilinear) when given.

    Returns:
        ``N x 3 x H x W`` float32 tensor.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(f"expected N x H x W (x 3) uint8 images, got {images.shape} {images.dtype}")
    batch = torch.from_numpy(np.array(images)).float().div(255)
    batch = batch[:, None].expand(-1, 3, -1, -1) if batch.ndim == 3 else batch.permute(0, 3, 1, 2)
    if size is not None and batch.shape[-1] != size:
        batch = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean_t = torch.tensor(mean, dtype=torch.float32)[None, :, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[None, :, None, None]
    return ((batch - mean_t) / std_t).contiguous()


# ================================================================== detection: data


class TreeTile(NamedTuple):
    """One aerial image with its tree-crown boxes.

    Attributes:
        name: File stem, e.g. ``"OSBS_029"``.
        site: NEON site code (``YELL``, ``OSBS``, ``SOAP``).
        image: ``H x W x 3`` ``uint8``.
        boxes: ``N x 4`` float32 ``(xmin, ymin, xmax, ymax)`` in pixels.
    """

    name: str
    site: str
    image: np.ndarray
    boxes: np.ndarray


def read_voc_boxes(path: str | Path) -> np.ndarray:
    """Read the boxes of a Pascal VOC XML annotation as an ``N x 4`` float32 array."""
    root = ElementTree.parse(str(path)).getroot()
    rows = [[float(obj.find("bndbox").find(key).text) for key in ("xmin", "ymin", "xmax", "ymax")]
            for obj in root.iter("object")]
    return np.array(rows, dtype=np.float32).reshape(-1, 4)


def load_tree_tiles(names: Sequence[str] | None = None) -> list[TreeTile]:
    """Load the real aerial RGB tiles with hand-drawn tree-crown boxes (NEON data via DeepForest).

    The files are read directly from the resolved ``trees_aerial`` folder; the
    deepforest package itself is never imported. Every crown is one class, "tree"
    (SOAP_061 marks dead and alive crowns; both count as trees here).

    Args:
        names: File stems to load (see :data:`TREE_TILES`); ``None`` loads all four.

    Returns:
        A list of :class:`TreeTile`.
    """
    from PIL import Image

    folder = resolve("trees_aerial").path
    names = list(TREE_TILES) if names is None else list(names)
    unknown = [name for name in names if name not in TREE_TILES]
    if unknown:
        raise ValueError(f"unknown tile(s) {unknown}; available: {list(TREE_TILES)}")
    tiles = []
    for name in names:
        with Image.open(folder / f"{name}.png") as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
        tiles.append(TreeTile(name, TREE_TILES[name], pixels, read_voc_boxes(folder / f"{name}.xml")))
    return tiles


def crop_tiles(tiles: Sequence[TreeTile], crop: int, min_visible: float = 0.6,
               min_boxes: int = 1, stride: int | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Cut tiles into ``crop x crop`` windows and clip their boxes.

    Args:
        tiles: The tiles.
        crop: Window size in pixels (edges that do not fill a window are dropped).
        min_visible: Keep a clipped box only if at least this share of its area lies
            inside the window.
        min_boxes: Drop windows with fewer boxes than this.
        stride: Step between windows; ``None`` (= ``crop``) gives non-overlapping
            windows, ``crop // 2`` about four times as many overlapping ones.

    Returns:
        ``(images, boxes)``: lists of ``crop x crop x 3`` arrays and ``K x 4`` arrays.
    """
    stride = stride or crop
    images, boxes = [], []
    for tile in tiles:
        height, width = tile.image.shape[:2]
        for top in range(0, height - crop + 1, stride):
            for left in range(0, width - crop + 1, stride):
                window = np.array([left, top, left + crop, top + crop], np.float32)
                kept = _clip_boxes(tile.boxes, window, min_visible)
                if len(kept) >= min_boxes:
                    images.append(tile.image[top:top + crop, left:left + crop])
                    boxes.append(kept)
    return images, boxes


def _clip_boxes(boxes: np.ndarray, window: np.ndarray, min_visible: float) -> np.ndarray:
    """Boxes clipped to ``window`` (in its coordinates), keeping those mostly inside."""
    clipped = np.concatenate([np.maximum(boxes[:, :2], window[:2]), np.minimum(boxes[:, 2:], window[2:])], 1)
    area = lambda b: np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)  # noqa: E731
    visible = area(clipped) / np.maximum(area(boxes), 1e-6)
    kept = clipped[visible >= min_visible] - np.tile(window[:2], 2)
    return kept.astype(np.float32).reshape(-1, 4)


# ================================================================== detection: model


def mobilenet_v2_backbone(pretrained: bool = True, blocks: int = 14) -> nn.Sequential:
    """The first ``blocks`` blocks of MobileNetV2's ``features`` as a detection backbone.

    ``blocks=14`` ends after the last 96-channel block (stride 16), fine enough for
    small objects; ``blocks=19`` is the whole body (1280 channels, stride 32).

    Args:
        pretrained: ImageNet weights (``True``) or a random initialisation.
        blocks: How many blocks of ``features`` to keep (1-19).

    Returns:
        An ``nn.Sequential`` with an ``out_channels`` attribute (what torchvision's
        detectors need).
    """
    from tlutils.models import load_mobilenet_v2

    features = load_mobilenet_v2(pretrained=pretrained).features
    if not 1 <= blocks <= len(features):
        raise ValueError(f"blocks must be between 1 and {len(features)}, got {blocks}")
    body = nn.Sequential(*features[:blocks])
    body.out_channels = _out_channels(body)
    return body


def _out_channels(body: nn.Module) -> int:
    """Channel count of a convolutional body's output (its last conv layer's)."""
    convs = [m for m in body.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


def build_mobilenet_faster_rcnn(num_classes: int = 2, pretrained: bool = True, blocks: int = 14,
                                image_size: int = 256, anchor_sizes: Sequence[int] = (16, 32, 64, 128),
                                aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0), representation: int = 256,
                                rois_per_image: int = 64, detections_per_image: int = 100) -> nn.Module:
    """A Faster R-CNN detector whose backbone is the ImageNet MobileNetV2.

    Two stages, as in Ren et al. (2015): a region proposal network slides over the
    backbone's feature map and proposes boxes around anchors; RoIAlign crops each
    proposal's features, and a small two-layer head classifies it and refines the
    box. Only the backbone is pre-trained; the RPN and box head start random.

    Args:
        num_classes: Object classes plus one for the background (2 for "tree").
        pretrained: ImageNet backbone (``True``) or the same backbone random.
        blocks: MobileNetV2 blocks in the backbone (see :func:`mobilenet_v2_backbone`).
        image_size: Images are used at this size (no resizing when they already are).
        anchor_sizes: Anchor box sides in pixels; cover the object sizes you expect.
        aspect_ratios: Anchor height/width ratios.
        representation: Width of the two-layer box head.
        rois_per_image: Proposals sampled per image to train the box head.
        detections_per_image: Most boxes returned per image.

    Returns:
        A torchvision ``FasterRCNN``: in train mode ``model(images, targets)`` returns
        a dict of losses; in eval mode ``model(images)`` returns boxes, labels, scores.
    """
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.rpn import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    if num_classes < 2:
        raise ValueError(f"num_classes counts the background too, so it must be at least 2, got {num_classes}")
    backbone = mobilenet_v2_backbone(pretrained, blocks)
    anchors = AnchorGenerator(sizes=(tuple(anchor_sizes),), aspect_ratios=(tuple(aspect_ratios),))
    roi_pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=1)
    box_head = TwoMLPHead(backbone.out_channels * 7 * 7, representation)
    return FasterRCNN(backbone, min_size=image_size, max_size=image_size,
                      image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
                      rpn_anchor_generator=anchors, box_roi_pool=roi_pool, box_head=box_head,
                      box_predictor=FastRCNNPredictor(representation, num_classes),
                      rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500,
                      rpn_pre_nms_top_n_test=500, rpn_post_nms_top_n_test=300,
                      box_batch_size_per_image=rois_per_image, box_detections_per_img=detections_per_image)


def _detection_batch(images: Sequence[np.ndarray], boxes: Sequence[np.ndarray] | None,
                     device: torch.device) -> tuple[list[torch.Tensor], list[dict] | None]:
    """uint8 images -> float tensors in [0, 1]; boxes -> torchvision target dicts (label 1)."""
    tensors = [torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255).to(device) for image in images]
    if boxes is None:
        return tensors, None
    targets = [{"boxes": torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4).to(device),
                "labels": torch.ones(len(b), dtype=torch.int64, device=device)} for b in boxes]
    return tensors, targets


def train_detector(model: nn.Module, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray], *,
                   epochs: int = 3, lr: float = 1e-3, batch_size: int = 4, device: torch.device | None = None,
                   seed: int = 0, flip: bool = True, progress: bool = True) -> History:
    """Fine-tune a torchvision detector on images with boxes (one object class).

    Each step sums the four Faster R-CNN losses (RPN objectness and box regression,
    box-head classification and regression). Random horizontal and vertical flips
    (aerial images have no "up") augment the data when ``flip`` is set. Frozen
    BatchNorm layers stay in eval mode (:func:`tlutils.surgery.set_train_mode`).

    Args:
        model: E.g. from :func:`build_mobilenet_faster_rcnn`.
        images: ``H x W x 3`` ``uint8`` images.
        boxes: One ``K x 4`` ``(xmin, ymin, xmax, ymax)`` array per image.
        epochs: Passes over the images.
        lr: AdamW learning rate, decayed with a cosine schedule.
        batch_size: Images per step.
        device: Where to train (``tlutils.utils.get_device()`` if ``None``).
        seed: Seeds the shuffling, the flips and any dropout.
        flip: Augment with random flips.
        progress: Show a tqdm progress bar.

    Returns:
        A :class:`~tlutils.train.History` with ``train_loss`` per epoch and each
        loss component.
    """
    from tqdm.auto import tqdm

    from tlutils.utils import get_device

    if len(images) != len(boxes) or not len(images):
        raise ValueError(f"need one box array per image and at least one image; got {len(images)} and {len(boxes)}")
    device = device or get_device()
    set_seed(seed)
    rng = np.random.default_rng(seed)
    model.to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=1e-4)
    steps = epochs * int(np.ceil(len(images) / batch_size))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    history = History()
    with tqdm(total=steps, desc="training detector", disable=not progress, leave=False) as bar:
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            set_train_mode(model)  # frozen BatchNorm layers keep their ImageNet statistics
            losses = _detector_epoch(model, images, boxes, optimizer, scheduler, batch_size, rng, flip, device, bar)
            history.epochs.append({"epoch": epoch, "lr": scheduler.get_last_lr()[0],
                                   "train_loss": sum(losses.values()), **losses,
                                   "seconds": time.perf_counter() - start})
    return history


def _detector_epoch(model, images, boxes, optimizer, scheduler, batch_size, rng, flip, device, bar) -> dict:
    """One shuffled pass; returns each loss component averaged over the images."""
    sums, count = {}, 0
    order = rng.permutation(len(images))
    for first in range(0, len(order), batch_size):
        batch = [_flip_example(images[i], boxes[i], rng) if flip else (images[i], boxes[i])
                 for i in order[first:first + batch_size]]
        inputs, targets = _detection_batch([b[0] for b in batch], [b[1] for b in batch], device)
        losses = model(inputs, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + value.item() * len(batch)
        count += len(batch)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return {name: total / count for name, total in sums.items()}


def _flip_example(image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random horizontal and vertical flips of an image and its boxes."""
    height, width = image.shape[:2]
    boxes = boxes.copy()
    if rng.random() < 0.5:
        image = image[:, ::-1]
        boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
    if rng.random() < 0.5:
        image = image[::-1]
        boxes[:, [1, 3]] = height - boxes[:, [3, 1]]
    return image, boxes


@torch.no_grad()
def predict_boxes(model: nn.Module, images: Sequence[np.ndarray], device: torch.device | None = None,
                  batch_size: int = 8) -> list[dict]:
    """Run a detector in eval mode.

    Returns:
        One dict per image with ``boxes`` (``K x 4``), ``scores`` and ``labels``,
        as numpy arrays.
    """
    from tlutils.utils import get_device

    device = device or get_device()
    model.to(device).eval()
    results = []
    for first in range(0, len(images), batch_size):
        inputs, _ = _detection_batch(images[first:first + batch_size], None, device)
        results += [{k: v.cpu().numpy() for k, v in out.items()} for out in model(inputs)]
    return results


# ================================================================== detection: metrics


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Intersection over union of every pair of ``(xmin, ymin, xmax, ymax)`` boxes.

    Returns:
        ``len(boxes_a) x len(boxes_b)`` array.
    """
    a = np.asarray(boxes_a, np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(-1)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def _match_image(pred_boxes: np.ndarray, scores: np.ndarray, true_boxes: np.ndarray,
                 iou_threshold: float) -> np.ndarray:
    """Greedy matching by score: 1 for a prediction that claims an unclaimed true box."""
    order = np.argsort(-scores, kind="stable")
    ious = box_iou(pred_boxes[order], true_boxes)
    taken = np.zeros(len(true_boxes), bool)
    hits = np.zeros(len(order), bool)
    for rank in range(len(order)):
        if not len(true_boxes):
            break
        candidates = np.where(taken, -1.0, ious[rank])
        best = int(candidates.argmax())
        if candidates[best] >= iou_threshold:
            taken[best], hits[rank] = True, True
    correct = np.zeros(len(order), bool)
    correct[order] = hits
    return correct


def detection_scores(predictions: Sequence[dict], true_boxes: Sequence[np.ndarray],
                     iou_threshold: float = 0.5, score_threshold: float = 0.5) -> dict:
    """Average precision and recall of one-class detections at an IoU threshold.

    A prediction is a true positive when its IoU with a not-yet-matched true box is
    at least ``iou_threshold`` (higher-scoring predictions match first). AP is the
    area under the precision-recall curve over all scores (all-point interpolation,
    as in Pascal VOC since 2010 and COCO's AP50); with one class it equals mAP@0.5.

    Args:
        predictions: One dict per image with ``boxes`` and ``scores`` (from :func:`predict_boxes`).
        true_boxes: One ``K x 4`` array per image.
        iou_threshold: Overlap a match needs (0.5 is the classic choice).
        score_threshold: Boxes scoring at least this count for ``recall`` and ``precision``.

    Returns:
        ``{"ap": ..., "recall": ..., "precision": ..., "max_recall": ..., "n_true": ...}``;
        ``max_recall`` uses every predicted box whatever its score.
    """
    if len(predictions) != len(true_boxes):
        raise ValueError(f"{len(predictions)} predictions but {len(true_boxes)} images of true boxes")
    scores, correct = [], []
    for pred, truth in zip(predictions, true_boxes):
        scores.append(np.asarray(pred["scores"], np.float64))
        correct.append(_match_image(np.asarray(pred["boxes"]).reshape(-1, 4), scores[-1],
                                    np.asarray(truth).reshape(-1, 4), iou_threshold))
    scores, correct = np.concatenate(scores), np.concatenate(correct)
    n_true = int(sum(len(np.asarray(t).reshape(-1, 4)) for t in true_boxes))
    if n_true == 0:
        raise ValueError("there are no true boxes: average precision is undefined")
    order = np.argsort(-scores, kind="stable")
    true_pos = np.cumsum(correct[order])
    recall_curve = true_pos / n_true
    precision_curve = true_pos / np.arange(1, len(order) + 1)
    confident = scores >= score_threshold
    return {"ap": _area_under_pr(recall_curve, precision_curve),
            "recall": float(correct[confident].sum() / n_true),
            "precision": float(correct[confident].mean()) if confident.any() else 0.0,
            "max_recall": float(recall_curve[-1]) if len(order) else 0.0, "n_true": n_true}


def _area_under_pr(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point interpolated area under a precision-recall curve."""
    if not len(recall):
        return 0.0
    recall = np.concatenate([[0.0], recall, [recall[-1]]])
    precision = np.concatenate([[1.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the precision envelope
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def show_detections(images: Sequence[np.ndarray], predictions: Sequence[dict], true_boxes: Sequence[np.ndarray],
                    score_threshold: float = 0.5, titles: Sequence[str] | None = None, size: float = 2.6):
    """Images with true boxes (white, dashed) and predicted boxes; returns the figure.

    Predicted boxes scoring at least ``score_threshold`` are drawn in red when
    confident, shading to yellow towards the threshold.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(1, len(images), figsize=(size * len(images), size * 1.08), squeeze=False)
    for i, (ax, image, pred, truth) in enumerate(zip(axes[0], images, predictions, true_boxes)):
        ax.imshow(image)
        for x0, y0, x1, y1 in np.asarray(truth).reshape(-1, 4):
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="white", ls="--", lw=1))
        keep = np.asarray(pred["scores"]) >= score_threshold
        for (x0, y0, x1, y1), score in zip(np.asarray(pred["boxes"])[keep], np.asarray(pred["scores"])[keep]):
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=plt.cm.autumn(1 - score), lw=1.5))
        ax.set_title(titles[i] if titles is not None else f"{int(keep.sum())} boxes, {len(truth)} true", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return fig


# ================================================================== segmentation: data


def make_composite_scenes(objects: np.ndarray, backgrounds: Sequence[np.ndarray], n_images: int,
                          size: int = 64, objects_per_image: tuple[int, int] = (1, 2),
                          object_size: tuple[int, int] = (26, 40), mask_threshold: int = 40,
                          seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Composite real grey objects onto crops of real photos; the masks come from the objects.

    Each scene is a random ``size`` px crop of a random background photo. One or
    more objects (for example Fashion-MNIST items) are rescaled, tinted with a random
    colour (their own grey shading is kept), and pasted with their pixel intensity as
    opacity. The mask is where an object pixel is brighter than ``mask_threshold``:
    it is exact by construction, because we made the scene. The photos and the object
    shapes are real; the scenes are composites.

    Args:
        objects: ``N x h x w`` ``uint8`` grey objects on a black background.
        backgrounds: ``H x W x 3`` ``uint8`` photos, at least ``size`` px each way.
        n_images: Scenes to make.
        size: Scene size in pixels.
        objects_per_image: Inclusive range of objects per scene.
        object_size: Inclusive range of object sizes in pixels.
        mask_threshold: Object intensity (0-255) above which a pixel is "object".
        seed: Random seed.

    Returns:
        ``(images, masks)``: ``n x size x size x 3`` ``uint8`` and ``n x size x size`` ``uint8`` (0/1).
    """
    if any(bg.shape[0] < size or bg.shape[1] < size for bg in backgrounds):
        raise ValueError(f"every background must be at least {size} x {size} pixels")
    rng = np.random.default_rng(seed)
    images = np.empty((n_images, size, size, 3), np.uint8)
    masks = np.zeros((n_images, size, size), np.uint8)
    for i in range(n_images):
        background = backgrounds[rng.integers(len(backgrounds))]
        y, x = rng.integers(0, background.shape[0] - size + 1), rng.integers(0, background.shape[1] - size + 1)
        scene = background[y:y + size, x:x + size].astype(np.float32)
        for _ in range(rng.integers(objects_per_image[0], objects_per_image[1] + 1)):
            side = int(rng.integers(object_size[0], object_size[1] + 1))
            _paste_object(scene, masks[i], objects[rng.integers(len(objects))], side, mask_threshold, rng)
        images[i] = np.clip(scene, 0, 255).astype(np.uint8)
    return images, masks


def _paste_object(scene: np.ndarray, mask: np.ndarray, item: np.ndarray, side: int, mask_threshold: int,
                  rng: np.random.Generator) -> None:
    """Paste one grey item, resized to ``side`` px and tinted, at a random place (in place)."""
    from PIL import Image

    item = np.asarray(Image.fromarray(item).resize((side, side), Image.BILINEAR))
    alpha = item.astype(np.float32) / 255
    top, left = rng.integers(0, scene.shape[0] - side + 1, size=2)
    colour = rng.uniform(0.25, 1.0, size=3) * 255
    region = scene[top:top + side, left:left + side]
    opacity = np.clip(alpha * 2.5, 0, 1)[..., None]  # faint edges blend in, the body is opaque
    region[:] = region * (1 - opacity) + alpha[..., None] * colour * opacity  # own shading, random colour
    mask[top:top + side, left:left + side] |= (item > mask_threshold).astype(np.uint8)


# ================================================================== segmentation: model


class _DecoderBlock(nn.Module):
    """Upsample x2, concatenate the skip connection, then two 3x3 conv-BN-ReLU layers."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels + skip_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.convs(x)


class MobileNetV2UNet(nn.Module):
    """A U-Net-style segmenter: the MobileNetV2 body as encoder, a light decoder with skips.

    The encoder's outputs at strides 2, 4, 8, 16 and 32 (``features`` blocks 1, 3,
    6, 13 and 18) are kept; the decoder upsamples the deepest one step by step,
    concatenating the matching encoder output each time (the U-Net skip
    connections of Ronneberger et al., 2015, that bring back fine detail), and a
    1x1 convolution gives per-pixel class logits at the input resolution.

    Attributes:
        encoder: MobileNetV2 ``features`` (pre-trained or random).
        decoder: The upsampling blocks (always trained from scratch).
        head: The final 1x1 convolution.
    """

    def __init__(self, encoder: nn.Sequential, num_classes: int = 1,
                 decoder_channels: Sequence[int] = (96, 48, 32, 24, 16)):
        super().__init__()
        if len(decoder_channels) != len(UNET_SKIPS):
            raise ValueError(f"decoder_channels needs {len(UNET_SKIPS)} values, got {len(decoder_channels)}")
        self.encoder = encoder
        skips = (*UNET_SKIP_CHANNELS[-2::-1], 0)  # stride 16, 8, 4, 2, then none at full size
        inputs = (UNET_SKIP_CHANNELS[-1], *decoder_channels[:-1])
        self.decoder = nn.ModuleList(_DecoderBlock(i, s, o) for i, s, o in zip(inputs, skips, decoder_channels))
        self.head = nn.Conv2d(decoder_channels[-1], num_classes, 1)

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's outputs at strides 2, 4, 8, 16 and 32."""
        outputs, x = [], images
        for index, block in enumerate(self.encoder):
            x = block(x)
            if index in UNET_SKIPS:
                outputs.append(x)
        return outputs

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``N x 3 x H x W`` images (H, W multiples of 32) -> ``N x num_classes x H x W`` logits."""
        if images.shape[-1] % 32 or images.shape[-2] % 32:
            raise ValueError(f"image height and width must be multiples of 32, got {tuple(images.shape[-2:])}")
        *skips, x = self.encode(images)
        for block, skip in zip(self.decoder, [*skips[::-1], None]):
            x = block(x, skip)
        return self.head(x)


def build_mobilenet_unet(num_classes: int = 1, pretrained: bool = True) -> MobileNetV2UNet:
    """A :class:`MobileNetV2UNet` with an ImageNet-pre-trained (or random) encoder.

    Args:
        num_classes: Output channels: 1 for object vs background (use a sigmoid),
            more for several classes (use a softmax).
        pretrained: Load the ImageNet weights into the encoder.

    Returns:
        The model; only the encoder differs between ``pretrained=True`` and ``False``.
    """
    from tlutils.models import load_mobilenet_v2

    return MobileNetV2UNet(load_mobilenet_v2(pretrained=pretrained).features, num_classes)


# ================================================================== segmentation: loss and metrics


def dice_bce_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice loss, the usual pair for foreground masks.

    Cross-entropy scores every pixel alone; Dice scores the overlap of the whole
    mask, so a small object is not drowned by the background.

    Args:
        logits: ``N x 1 x H x W`` raw scores.
        masks: ``N x 1 x H x W`` targets in {0, 1} (float).
    """
    bce = F.binary_cross_entropy_with_logits(logits, masks)
    probs = logits.sigmoid()
    intersection = (probs * masks).sum(dim=(1, 2, 3))
    dice = (2 * intersection + 1) / (probs.sum(dim=(1, 2, 3)) + masks.sum(dim=(1, 2, 3)) + 1)
    return bce + (1 - dice).mean()


def mask_iou(predicted: np.ndarray | torch.Tensor, true: np.ndarray | torch.Tensor) -> float:
    """Intersection over union of two sets of binary masks, pooled over all pixels.

    Args:
        predicted: Boolean (or 0/1) masks, any shape.
        true: Masks of the same shape.

    Returns:
        IoU in [0, 1]; 1.0 when both are empty.
    """
    predicted, true = np.asarray(predicted).astype(bool), np.asarray(true).astype(bool)
    if predicted.shape != true.shape:
        raise ValueError(f"predicted {predicted.shape} and true {true.shape} masks differ in shape")
    union = np.logical_or(predicted, true).sum()
    return 1.0 if union == 0 else float(np.logical_and(predicted, true).sum() / union)


@torch.no_grad()
def predict_masks(model: nn.Module, images: torch.Tensor, device: torch.device | None = None,
                  batch_size: int = 32, threshold: float = 0.5) -> np.ndarray:
    """Binary masks from a one-channel segmenter: ``N x H x W`` boolean."""
    from tlutils.utils import get_device

    device = device or get_device()
    model.to(device).eval()
    masks = [model(images[i:i + batch_size].to(device)).sigmoid()[:, 0].cpu() > threshold
             for i in range(0, len(images), batch_size)]
    return torch.cat(masks).numpy()


def show_masks(images: Sequence[np.ndarray], true_masks: Sequence[np.ndarray],
               predicted: dict[str, Sequence[np.ndarray]], size: float = 1.7):
    """Images, true masks and each model's predicted masks in rows; returns the figure.

    Args:
        images: The scenes.
        true_masks: Their true masks.
        predicted: Row label -> predicted masks, e.g. ``{"pre-trained": m1, "random": m2}``.
        size: Inches per panel.
    """
    import matplotlib.pyplot as plt

    rows = [("image", images), ("true mask", true_masks), *predicted.items()]
    n = len(images)
    fig, axes = plt.subplots(len(rows), n, figsize=(size * n, size * len(rows)), squeeze=False)
    for r, (label, row) in enumerate(rows):
        for c in range(n):
            axes[r, c].imshow(np.asarray(row[c]), cmap=None if r == 0 else "gray", vmin=0, vmax=None if r == 0 else 1)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=9)
    fig.tight_layout()
    return fig


# ================================================================== BatchNorm statistics


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader, device: torch.device | None = None) -> nn.Module:
    """Re-estimate every BatchNorm layer's running mean and variance on ``loader``.

    During a short training run the weights move faster than the running averages
    (momentum 0.1) can follow, so in eval mode a network trained from scratch can
    normalise with stale statistics and collapse to one class. One pass over
    training data with a cumulative average fixes the statistics without changing
    any weight. Pre-trained networks suffer much less: their weights move little.

    Args:
        model: Any network with BatchNorm layers.
        loader: Yields ``(inputs, targets)`` batches of training data (no augmentation needed).
        device: Where to run (``tlutils.utils.get_device()`` if ``None``).

    Returns:
        The model, in eval mode.
    """
    from tlutils.utils import get_device

    device = device or get_device()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in norms]
    model.to(device).eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over all batches
        norm.train()
    for inputs, _ in loader:
        model(inputs.to(device))
    for norm, (momentum, _) in zip(norms, saved):
        norm.momentum = momentum
    return model.eval()
