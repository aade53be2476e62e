"""Object detection with a pre-trained backbone: a Faster R-CNN on MobileNetV2, trained through ``fit``.

:func:`detection_step` is the step function (the sum of the four Faster R-CNN
losses); :func:`train_detector` passes it to :func:`~tlutils.core.train.fit` with
:class:`DetectionBatches`, which shuffles and flips images with their boxes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from tlutils.core.datasets import IMAGENET_MEAN, IMAGENET_STD
from tlutils.core.models import mobilenet_v2_backbone
from tlutils.core.train import History, Loss, fit


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


class DetectionBatches:
    """Shuffled batches of ``(image, boxes)`` pairs, randomly flipped, for :func:`detection_step`.

    Every pass draws a new order (and new flips) from one generator seeded once, so the
    same seed gives the same batches, epoch after epoch.

    Args:
        images: ``H x W x 3`` ``uint8`` images.
        boxes: One ``K x 4`` ``(xmin, ymin, xmax, ymax)`` array per image.
        batch_size: Images per batch.
        seed: Seeds the order and the flips.
        flip: Random horizontal and vertical flips (aerial images have no "up").
    """

    def __init__(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray], batch_size: int = 4,
                 seed: int = 0, flip: bool = True):
        if len(images) != len(boxes) or not len(images):
            raise ValueError(f"need one box array per image and at least one image; got {len(images)} and {len(boxes)}")
        self.images, self.boxes, self.batch_size, self.flip = images, boxes, batch_size, flip
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return int(np.ceil(len(self.images) / self.batch_size))

    def __iter__(self):
        order = self.rng.permutation(len(self.images))
        for first in range(0, len(order), self.batch_size):
            yield [_flip_example(self.images[i], self.boxes[i], self.rng) if self.flip else (self.images[i], self.boxes[i])
                   for i in order[first:first + self.batch_size]]


def detection_step(model: nn.Module, batch, device: torch.device) -> Loss:
    """The step function of a torchvision detector: the sum of its losses, each logged by name.

    For Faster R-CNN the four parts are the RPN's objectness and box regression and the box
    head's classification and regression.
    """
    inputs, targets = _detection_batch([image for image, _ in batch], [boxes for _, boxes in batch], device)
    losses = model(inputs, targets)
    return Loss(sum(losses.values()), {name: value.item() for name, value in losses.items()}, len(batch))


def train_detector(model: nn.Module, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray], *,
                   epochs: int = 3, lr: float = 1e-3, batch_size: int = 4, device: torch.device | None = None,
                   seed: int = 0, flip: bool = True, progress: bool = True) -> History:
    """Fine-tune a torchvision detector on images with boxes (one object class), through ``fit``.

    :func:`detection_step` on :class:`DetectionBatches`, with AdamW (weight decay 1e-4) and
    a cosine schedule. Frozen BatchNorm layers stay in eval mode
    (:func:`tlutils.core.surgery.set_train_mode`, called by ``fit`` every epoch).

    Args:
        model: E.g. from :func:`build_mobilenet_faster_rcnn`.
        images: ``H x W x 3`` ``uint8`` images.
        boxes: One ``K x 4`` ``(xmin, ymin, xmax, ymax)`` array per image.
        epochs: Passes over the images.
        lr: AdamW learning rate, decayed with a cosine schedule.
        batch_size: Images per step.
        device: Where to train; ``None`` picks :func:`~tlutils.core.runtime.get_device`.
        seed: Seeds the shuffling, the flips and any dropout.
        flip: Augment with random flips.
        progress: Show a tqdm progress bar.

    Returns:
        A :class:`~tlutils.core.train.History` with ``train_loss`` per epoch and each
        loss component.
    """
    batches = DetectionBatches(images, boxes, batch_size, seed=seed, flip=flip)
    return fit(model, batches, epochs=epochs, lr=lr, weight_decay=1e-4, scheduler="cosine", step=detection_step,
               device=device, seed=seed, progress=progress, desc="training detector")


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
    from tlutils.core.runtime import get_device

    device = device or get_device()
    model.to(device).eval()
    results = []
    for first in range(0, len(images), batch_size):
        inputs, _ = _detection_batch(images[first:first + batch_size], None, device)
        results += [{k: v.cpu().numpy() for k, v in out.items()} for out in model(inputs)]
    return results


# --------------------------------------------------------------------------------------------
# A one-stage detector on the same task: YOLOv3-tiny, output convolutions retrained for one class


class _FlipChoices(DetectionBatches):
    """The batches of :class:`DetectionBatches` (same order, same flips for a seed) as ``(index, h, v)``."""

    def __iter__(self):
        order = self.rng.permutation(len(self.images))
        for first in range(0, len(order), self.batch_size):
            yield [(int(i), *((self.rng.random() < 0.5, self.rng.random() < 0.5) if self.flip else (False, False)))
                   for i in order[first:first + self.batch_size]]


def _flipped(image: np.ndarray, boxes: np.ndarray, horizontal: bool, vertical: bool):
    height, width = image.shape[:2]
    boxes = np.array(boxes, dtype=np.float32).reshape(-1, 4)
    if horizontal:
        image, boxes[:, [0, 2]] = image[:, ::-1], width - boxes[:, [2, 0]]
    if vertical:
        image, boxes[:, [1, 3]] = image[::-1], height - boxes[:, [3, 1]]
    return np.ascontiguousarray(image), boxes


@torch.no_grad()
def yolo_head_features(model: nn.Module, images: Sequence[np.ndarray], device: torch.device | None = None,
                       batch_size: int = 16) -> list[list[torch.Tensor]]:
    """The frozen part of a YOLOv3-tiny run once: per image, the two maps its output convolutions read.

    Images are used at their own size (a multiple of 32), scaled to [0, 1] as Darknet does.
    """
    from tlutils.core.runtime import get_device

    device = device or get_device()
    model.to(device).eval()
    out = []
    for first in range(0, len(images), batch_size):
        x = torch.from_numpy(np.stack(images[first:first + batch_size])).permute(0, 3, 1, 2).float().div(255)
        large, small = model.head_features(x.to(device))
        out += [[large[i].cpu(), small[i].cpu()] for i in range(len(large))]
    return out


class YOLOFeatureBatches:
    """Batches of cached head features and boxes, in the order and with the flips of :class:`DetectionBatches`.

    The four flips of each image go through the frozen network once (:func:`yolo_head_features`);
    every batch then only needs the output convolutions. Items are ``((maps, (h, w)), boxes)``,
    which :func:`tlutils.core.yolo.yolo_step` understands.
    """

    def __init__(self, model: nn.Module, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray], batch_size: int = 4,
                 seed: int = 0, flip: bool = True, device: torch.device | None = None, cache: dict | None = None):
        self.choices = _FlipChoices(images, boxes, batch_size, seed=seed, flip=flip)
        self.size = tuple(images[0].shape[:2])
        flips = [(h, v) for h in (False, True) for v in (False, True)] if flip else [(False, False)]
        self.cache = cache if cache is not None else {}
        missing = [(i, h, v) for i in range(len(images)) for h, v in flips if (i, h, v) not in self.cache]
        pairs = [_flipped(images[i], boxes[i], h, v) for i, h, v in missing]
        maps = yolo_head_features(model, [image for image, _ in pairs], device) if pairs else []
        for key, (_, flipped_boxes), features in zip(missing, pairs, maps):
            self.cache[key] = (features, flipped_boxes)

    def __len__(self) -> int:
        return len(self.choices)

    def __iter__(self):
        for batch in self.choices:
            yield [((self.cache[key][0], self.size), self.cache[key][1]) for key in batch]


def train_yolo_heads(model: nn.Module, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray], *,
                     epochs: int = 3, lr: float = 1e-3, batch_size: int = 4, device: torch.device | None = None,
                     seed: int = 0, flip: bool = True, cache: dict | None = None, progress: bool = True) -> History:
    """Fine-tune the two output convolutions of a YOLOv3-tiny (everything else frozen), through ``fit``.

    The same recipe as :func:`train_detector` (AdamW, weight decay 1e-4, cosine schedule, the same
    batches and flips for a seed), with :func:`tlutils.core.yolo.yolo_step` on cached features
    (:class:`YOLOFeatureBatches`): the frozen network runs once per image and flip, not once per step.

    Args:
        model: A :class:`~tlutils.core.yolo.YOLOv3Tiny` adapted with
            :func:`~tlutils.core.yolo.adapt_to_classes`; this function freezes all but its output convolutions.
        images, boxes: As for :func:`train_detector`; image sides must be multiples of 32.
        cache: A dict to keep the features in, to reuse them across runs of the same frozen model.

    Returns:
        The :class:`~tlutils.core.train.History`.
    """
    from tlutils.core.surgery import freeze, unfreeze
    from tlutils.core.yolo import yolo_step

    if any(side % 32 for side in images[0].shape[:2]):
        raise ValueError(f"YOLOv3-tiny needs image sides that are multiples of 32, got {images[0].shape[:2]}")
    freeze(model)
    unfreeze(model, ["head_large.1", "head_small.1"])
    batches = YOLOFeatureBatches(model, images, boxes, batch_size, seed=seed, flip=flip, device=device, cache=cache)
    return fit(model, batches, epochs=epochs, lr=lr, weight_decay=1e-4, scheduler="cosine", step=yolo_step,
               device=device, seed=seed, progress=progress, desc="training YOLO")


@torch.no_grad()
def predict_yolo(model: nn.Module, images: Sequence[np.ndarray], device: torch.device | None = None,
                 features: list | None = None, score_threshold: float = 0.001, iou_threshold: float = 0.45,
                 max_detections: int = 100) -> list[dict]:
    """Boxes of a YOLOv3-tiny on images used at their own size, in the format of :func:`predict_boxes`.

    Args:
        features: The images' :func:`yolo_head_features`, when cached (the frozen part unchanged).
        score_threshold: Keep boxes above this objectness x class probability (low, for AP).
        max_detections: Most boxes kept per image (as the Faster R-CNN's ``detections_per_image``).
    """
    from tlutils.core.runtime import get_device
    from tlutils.core.yolo import ANCHORS, HEAD_ANCHORS, Letterbox, decode_head, postprocess

    device = device or get_device()
    model.to(device).eval()
    features = features if features is not None else yolo_head_features(model, images, device)
    results = []
    for image, maps in zip(images, features):
        size = tuple(image.shape[:2])
        raw = model.outputs_from([m[None].to(device) for m in maps])
        rows = torch.cat([decode_head(r, [ANCHORS[a] for a in group], size) for r, group in zip(raw, HEAD_ANCHORS)], 1)
        found = postprocess(rows[0].float().cpu(), Letterbox(1.0, 1.0, 0, 0), size, score_threshold, iou_threshold)
        results.append({key: value[:max_detections] for key, value in found.items()})
    return results
