"""YOLOv3-tiny, a one-stage detector, as a plain ``nn.Module``: Darknet's letterbox, box decoding and NMS.

The network is the one of Darknet's ``yolov3-tiny.cfg`` (Redmon & Farhadi, 2018), written out
layer by layer: a 13-layer backbone of 3x3 convolutions and max-pools, then two YOLO heads, one
on the 13 x 13 map (large objects) and one on the 26 x 26 map (an upsampled 13 x 13 map joined
with layer 8, small objects). Each head predicts, for each cell and each of its 3 anchor boxes,
85 numbers: the box offsets (x, y, w, h), an objectness score and 80 class scores.

The pre-trained COCO weights come from Darknet's own file format;
:func:`tlutils.core.convert.load_darknet_weights` reads it into this module in
:meth:`YOLOv3Tiny.darknet_layers` order, and :func:`tlutils.core.models.load_yolov3_tiny`
returns the ready model.

Example:
    >>> from tlutils.core.models import load_yolov3_tiny
    >>> model = load_yolov3_tiny()
    >>> found = detect(model, image)          # image: H x W x 3 uint8 RGB
    >>> found["names"][:3]
    ['car', 'bicycle', 'dog']
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: The six anchor boxes of yolov3-tiny.cfg, in pixels of the 416 x 416 input (width, height).
ANCHORS = ((10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319))
#: Which anchors each head uses: the coarse 13 x 13 head the large ones, the 26 x 26 head the small ones.
HEAD_ANCHORS = ((3, 4, 5), (0, 1, 2))
INPUT_SIZE = 416


def conv_block(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """Darknet's ``[convolutional]`` with ``batch_normalize=1`` and leaky ReLU (slope 0.1)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels, eps=1e-5),
        nn.LeakyReLU(0.1),
    )


class YOLOv3Tiny(nn.Module):
    """yolov3-tiny: backbone, the 13 x 13 head and the 26 x 26 head.

    ``forward`` returns Darknet's decoded predictions, ``(batch, 2535, 5 + num_classes)`` for a
    416 x 416 input: box centre x, y and width, height in input pixels, objectness, and class
    probabilities (sigmoids, as in YOLOv3: one image region may hold a "person" and a "woman").

    Args:
        num_classes: 80 for COCO; another number gives new, random output convolutions.
        class_names: The names of the classes (kept on the model for :func:`detect`).
    """

    def __init__(self, num_classes: int = 80, class_names: list[str] | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        widths = (16, 32, 64, 128, 256, 512)
        self.backbone = nn.ModuleList(
            conv_block(3 if i == 0 else widths[i - 1], width, 3) for i, width in enumerate(widths)
        )
        self.conv_1024 = conv_block(512, 1024, 3)        # cfg layer 12
        self.neck = conv_block(1024, 256, 1)             # layer 13: both heads start here
        self.head_large = nn.Sequential(conv_block(256, 512, 3), nn.Conv2d(512, 3 * (5 + num_classes), 1))
        self.reduce = conv_block(256, 128, 1)            # layer 18, then upsample x2 and join layer 8
        self.head_small = nn.Sequential(conv_block(128 + 256, 256, 3), nn.Conv2d(256, 3 * (5 + num_classes), 1))

    def darknet_layers(self) -> list[tuple[nn.Conv2d, nn.BatchNorm2d | None]]:
        """The convolutions in the order of the cfg file (and of the weights file), with their BatchNorm."""
        blocks = [*self.backbone, self.conv_1024, self.neck, self.head_large[0], self.head_large[1],
                  self.reduce, self.head_small[0], self.head_small[1]]
        return [(block[0], block[1]) if isinstance(block, nn.Sequential) else (block, None) for block in blocks]

    def raw_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The two heads' raw maps, ``(batch, 3 * (5 + classes), 13, 13)`` and ``(..., 26, 26)`` at 416 px."""
        return self.outputs_from(self.head_features(x))

    def outputs_from(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """The two output 1 x 1 convolutions applied to :meth:`head_features` (cached or fresh)."""
        return [self.head_large[-1](features[0]), self.head_small[-1](features[1])]

    def head_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Everything but the two output convolutions: their inputs, 512 x 13 x 13 and 256 x 26 x 26 at 416 px.

        With the rest of the network frozen these maps do not change during training, so they can be
        computed once per image and cached (:func:`tlutils.topics.detection.train_yolo_heads`).
        """
        for i, block in enumerate(self.backbone):
            x = block(x)
            if i == 4:
                route = x                                # layer 8: the stride-16 map the small head reuses
            # Darknet's last pool (size 2, stride 1) pads right and bottom so that the map stays 13 x 13
            x = F.max_pool2d(x, 2, 2) if i < 5 else F.max_pool2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), 2, 1)
        neck = self.neck(self.conv_1024(x))
        small = torch.cat([F.interpolate(self.reduce(neck), scale_factor=2, mode="nearest"), route], 1)
        return [self.head_large[0](neck), self.head_small[0](small)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return torch.cat([decode_head(raw, [ANCHORS[a] for a in anchors], size)
                          for raw, anchors in zip(self.raw_outputs(x), HEAD_ANCHORS)], 1)


def decode_head(raw: torch.Tensor, anchors: list[tuple[int, int]], input_size) -> torch.Tensor:
    """One head's map -> ``(batch, anchors * h * w, 5 + classes)`` rows, as Darknet's ``[yolo]`` layer decodes.

    Centre = (sigmoid(t_xy) + cell) / grid * input size; size = exp(t_wh) * anchor; objectness and
    classes are sigmoids. Rows are in (anchor, row, column) order.
    """
    batch, _, h, w = raw.shape
    n = len(anchors)
    p = raw.view(batch, n, -1, h, w).permute(0, 1, 3, 4, 2)
    gy, gx = torch.meshgrid(torch.arange(h, device=raw.device), torch.arange(w, device=raw.device), indexing="ij")
    cell = torch.stack([gx, gy], -1).to(raw.dtype)
    stride = torch.tensor([input_size[1] / w, input_size[0] / h], dtype=raw.dtype, device=raw.device)
    xy = (p[..., :2].sigmoid() + cell) * stride
    wh = p[..., 2:4].exp() * torch.tensor(anchors, dtype=raw.dtype, device=raw.device).view(1, n, 1, 1, 2)
    return torch.cat([xy, wh, p[..., 4:].sigmoid()], -1).reshape(batch, n * h * w, -1)


@dataclass(frozen=True)
class Letterbox:
    """How :func:`letterbox` placed an image: ``input x = image x * scale_x + dx`` (and so for y)."""

    scale_x: float
    scale_y: float
    dx: int
    dy: int

    def to_image(self, boxes: torch.Tensor) -> torch.Tensor:
        """Boxes (x0, y0, x1, y1) in network-input pixels -> pixels of the original image."""
        offset = torch.tensor([self.dx, self.dy, self.dx, self.dy], dtype=boxes.dtype, device=boxes.device)
        scale = torch.tensor([self.scale_x, self.scale_y] * 2, dtype=boxes.dtype, device=boxes.device)
        return (boxes - offset) / scale


def letterbox(image: np.ndarray, size: int = INPUT_SIZE) -> tuple[torch.Tensor, Letterbox]:
    """Darknet's ``letterbox_image``: scale to fit ``size`` x ``size`` keeping the proportions, pad with grey.

    Stretching the image to a square instead (as ``cv2.dnn.blobFromImage`` does) changes the
    shapes the network learnt and costs accuracy: on a coffee photo it ranks "toilet" first.
    The sizes use Darknet's integer arithmetic and its bilinear resize, which maps corner pixel
    to corner pixel (``align_corners=True``); the scores of yolov3-tiny move by a few hundredths
    with a one-pixel change of the resized size, so these details matter.

    Args:
        image: ``H x W x 3`` uint8 RGB.
        size: The network's input side.

    Returns:
        The ``(3, size, size)`` float tensor in [0, 1] and the :class:`Letterbox` placement.
    """
    h, w = image.shape[:2]
    new_w, new_h = (size, h * size // w) if w >= h else (w * size // h, size)   # Darknet's integer arithmetic
    pixels = torch.from_numpy(np.array(image[..., :3], dtype=np.uint8)).permute(2, 0, 1).float().div(255)
    resized = F.interpolate(pixels[None], size=(new_h, new_w), mode="bilinear", align_corners=True)[0]
    out = torch.full((3, size, size), 0.5)
    dx, dy = (size - new_w) // 2, (size - new_h) // 2
    out[:, dy:dy + new_h, dx:dx + new_w] = resized
    return out, Letterbox(new_w / w, new_h / h, dx, dy)


def postprocess(rows: torch.Tensor, placement: Letterbox, image_size: tuple[int, int],
                score_threshold: float = 0.25, iou_threshold: float = 0.45) -> dict:
    """Decoded rows of one image -> its detections, boxes in image pixels.

    Each row's score is objectness x its best class probability; rows under ``score_threshold``
    go, then non-maximum suppression per class (``torchvision.ops.batched_nms``) keeps the best
    of overlapping boxes, as Darknet's ``do_nms_sort`` does.

    Returns:
        ``boxes`` (K x 4: x0, y0, x1, y1), ``scores`` and ``labels`` as numpy arrays, best first.
    """
    from torchvision.ops import batched_nms, box_convert, clip_boxes_to_image

    scores, labels = (rows[:, 4:5] * rows[:, 5:]).max(1)
    keep = scores > score_threshold
    boxes = placement.to_image(box_convert(rows[keep, :4], "cxcywh", "xyxy"))
    boxes = clip_boxes_to_image(boxes, image_size)
    scores, labels = scores[keep], labels[keep]
    best = batched_nms(boxes, scores, labels, iou_threshold)
    return {"boxes": boxes[best].numpy(), "scores": scores[best].numpy(), "labels": labels[best].numpy()}


@torch.no_grad()
def detect(model: YOLOv3Tiny, image: np.ndarray, score_threshold: float = 0.25, iou_threshold: float = 0.45,
           size: int = INPUT_SIZE) -> dict:
    """Detect the objects of one photo: letterbox, one forward pass, decode, NMS.

    Args:
        model: A :class:`YOLOv3Tiny` (in eval mode after this call).
        image: ``H x W x 3`` uint8 RGB.
        score_threshold: Keep boxes whose objectness x class probability exceeds this (Darknet: 0.25).
        iou_threshold: Overlapping boxes of one class above this IoU keep only the best (Darknet: 0.45).
        size: Input side, a multiple of 32 (416 as trained; 608 finds smaller objects, slower).

    Returns:
        ``boxes``, ``scores``, ``labels`` (numpy, best first) and ``names`` (the class names).
    """
    model.eval()
    inputs, placement = letterbox(image, size)
    device = next(model.parameters()).device
    rows = model(inputs[None].to(device))[0].float().cpu()
    found = postprocess(rows, placement, image.shape[:2], score_threshold, iou_threshold)
    found["names"] = [model.class_names[int(label)] for label in found["labels"]]
    return found


# --------------------------------------------------------------------------------------------
# Fine-tuning: a new one-class output, the YOLOv3 loss and its step function for ``fit``


def adapt_to_classes(model: YOLOv3Tiny, class_names: list[str]) -> YOLOv3Tiny:
    """Replace the two output convolutions by ones for ``class_names``, keeping what transfers.

    Each output convolution predicts, per anchor, 4 box numbers, 1 objectness and one score per
    class (``3 * (5 + 80) = 255`` channels for COCO). The new one has ``3 * (5 + len(class_names))``
    channels: the box and objectness rows of every anchor keep their COCO-trained weights (where
    to put a box and whether a cell holds an object carry over to any class), the class rows are
    new, with zero weights and bias (probability 0.5 before training). Everything else in the
    network is unchanged.

    Args:
        model: A :class:`YOLOv3Tiny`, e.g. from :func:`tlutils.core.models.load_yolov3_tiny`.
        class_names: The new classes, e.g. ``["tree"]``.

    Returns:
        The same model, changed in place, with ``num_classes`` and ``class_names`` updated.
    """
    if not class_names:
        raise ValueError("adapt_to_classes needs at least one class name, e.g. ['tree']")
    old, new = 5 + model.num_classes, 5 + len(class_names)
    for head in (model.head_large, model.head_small):
        conv = head[-1]
        fresh = nn.Conv2d(conv.in_channels, 3 * new, 1).to(conv.weight.device)
        with torch.no_grad():
            fresh.weight.zero_()
            fresh.bias.zero_()
            for a in range(3):
                fresh.weight[a * new:a * new + 5] = conv.weight[a * old:a * old + 5]
                fresh.bias[a * new:a * new + 5] = conv.bias[a * old:a * old + 5]
        head[-1] = fresh
    model.num_classes, model.class_names = len(class_names), list(class_names)
    return model


def _check_boxes(boxes, index: int) -> torch.Tensor:
    """One image's boxes as a float ``K x 4`` tensor, or a clear error."""
    boxes = torch.as_tensor(np.asarray(boxes, dtype=np.float32) if not torch.is_tensor(boxes) else boxes,
                            dtype=torch.float32)
    if boxes.numel() == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"image {index}: boxes must be a K x 4 array (x0, y0, x1, y1), got shape {tuple(boxes.shape)}")
    if not torch.isfinite(boxes).all() or (boxes[:, 2:] <= boxes[:, :2]).any():
        raise ValueError(f"image {index}: every box needs finite x0 < x1 and y0 < y1 (x0, y0, x1, y1 order)")
    return boxes


def _shape_iou(wh: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """IoU of boxes and anchors placed on the same centre: ``K x 2`` and ``A x 2`` sizes -> ``K x A``."""
    inter = torch.min(wh[:, None], anchors[None]).prod(-1)
    return inter / (wh.prod(-1)[:, None] + anchors.prod(-1)[None] - inter)


def assign_targets(boxes: list, grid_sizes: list[tuple[int, int]], input_size: tuple[int, int],
                   anchors=ANCHORS, head_anchors=HEAD_ANCHORS) -> list[dict]:
    """YOLOv3's target assignment: each true box goes to its best-shaped anchor, in the cell of its centre.

    The best anchor (largest IoU of the box and the anchor on a common centre, over all six)
    decides the head (its scale); the box centre decides the cell of that head's grid. The
    targets are the ones :func:`decode_head` inverts: ``t_xy`` = the centre's offset inside the
    cell (in [0, 1), learnt through a sigmoid) and ``t_wh`` = log(box size / anchor size).

    Args:
        boxes: One ``K x 4`` array or tensor ``(x0, y0, x1, y1)`` per image, in input pixels.
        grid_sizes: ``(rows, columns)`` of each head's map, in :data:`HEAD_ANCHORS` order.
        input_size: ``(height, width)`` of the network input.

    Returns:
        One dict per head with 1-D tensors ``image``, ``anchor`` (0-2 within the head), ``row``,
        ``col``, and ``txy`` (``N x 2``), ``twh`` (``N x 2``) and ``scale`` (``2 - w h / input
        area``, YOLOv3's weight that favours small boxes).
    """
    all_anchors = torch.tensor(anchors, dtype=torch.float32)
    head_of = {a: (h, i) for h, group in enumerate(head_anchors) for i, a in enumerate(group)}
    found = [{"image": [], "anchor": [], "row": [], "col": [], "txy": [], "twh": [], "scale": []}
             for _ in head_anchors]
    for b, image_boxes in enumerate(boxes):
        image_boxes = _check_boxes(image_boxes, b)
        if not len(image_boxes):
            continue
        wh = image_boxes[:, 2:] - image_boxes[:, :2]
        centre = (image_boxes[:, :2] + image_boxes[:, 2:]) / 2
        best = _shape_iou(wh, all_anchors).argmax(1)
        for k in range(len(image_boxes)):
            h, a = head_of[int(best[k])]
            rows, cols = grid_sizes[h]
            stride = torch.tensor([input_size[1] / cols, input_size[0] / rows])
            cell_xy = centre[k] / stride
            col, row = min(int(cell_xy[0]), cols - 1), min(int(cell_xy[1]), rows - 1)
            target = found[h]
            target["image"].append(b), target["anchor"].append(a), target["row"].append(row), target["col"].append(col)
            target["txy"].append((cell_xy - torch.tensor([col, row])).clamp(0, 1))
            target["twh"].append(torch.log(wh[k] / all_anchors[best[k]]))
            target["scale"].append(2 - wh[k].prod() / (input_size[0] * input_size[1]))
    out = []
    for target in found:
        n = len(target["image"])
        out.append({key: torch.tensor(target[key], dtype=torch.long) for key in ("image", "anchor", "row", "col")}
                   | {"txy": torch.stack(target["txy"]) if n else torch.zeros(0, 2),
                      "twh": torch.stack(target["twh"]) if n else torch.zeros(0, 2),
                      "scale": torch.stack(target["scale"]) if n else torch.zeros(0)})
    return out


def yolo_loss(raw: list[torch.Tensor], boxes: list, input_size: tuple[int, int], ignore_iou: float = 0.5,
              anchors=ANCHORS, head_anchors=HEAD_ANCHORS) -> dict[str, torch.Tensor]:
    """The YOLOv3 loss of both heads, summed over the batch and divided by the number of images.

    - ``box``: at each assigned anchor, binary cross-entropy of ``sigmoid(t_xy)`` against the
      centre offset plus squared error of ``t_wh`` against the log size ratio, weighted by
      ``2 - w h / input area`` (:func:`assign_targets`);
    - ``objectness``: binary cross-entropy, target 1 at the assigned anchors and 0 elsewhere,
      except that a prediction whose decoded box already overlaps a true box by IoU above
      ``ignore_iou`` is not pushed towards 0 (it is a good box, only not the assigned one);
    - ``class``: binary cross-entropy of the class scores at the assigned anchors (target 1 for
      the class, all boxes here being of class 0).

    Args:
        raw: :meth:`YOLOv3Tiny.raw_outputs` (or :meth:`~YOLOv3Tiny.outputs_from`), in head order.
        boxes: One ``K x 4`` ``(x0, y0, x1, y1)`` array per image, in input pixels, class 0.
        input_size: ``(height, width)`` of the network input.
        ignore_iou: The IoU above which a prediction's objectness is not penalised.

    Returns:
        ``{"box", "objectness", "class"}`` scalar tensors (add them for the total).
    """
    from torchvision.ops import box_convert, box_iou

    if len(raw) != len(head_anchors):
        raise ValueError(f"expected {len(head_anchors)} head outputs, got {len(raw)}")
    if len(boxes) != raw[0].shape[0]:
        raise ValueError(f"{len(boxes)} box arrays for a batch of {raw[0].shape[0]} images")
    batch, device = raw[0].shape[0], raw[0].device
    targets = assign_targets(boxes, [tuple(r.shape[-2:]) for r in raw], input_size, anchors, head_anchors)
    true_xyxy = [_check_boxes(b, i).to(device) for i, b in enumerate(boxes)]
    bce = F.binary_cross_entropy_with_logits
    box = obj = cls = raw[0].new_zeros(())
    for head_raw, group, target in zip(raw, head_anchors, targets):
        _, _, h, w = head_raw.shape
        p = head_raw.view(batch, len(group), -1, h, w).permute(0, 1, 3, 4, 2)   # batch, anchor, row, col, 5 + C
        if p.shape[-1] < 6:
            raise ValueError(f"a head map of {head_raw.shape[1]} channels does not hold 3 x (5 + classes)")
        obj_target = torch.zeros(p.shape[:4], device=device)
        with torch.no_grad():                                                       # the ignore mask
            decoded = decode_head(head_raw.detach(), [anchors[a] for a in group], input_size).view(batch, len(group), h, w, -1)
            ignore = torch.zeros_like(obj_target, dtype=torch.bool)
            for b in range(batch):
                if len(true_xyxy[b]):
                    iou = box_iou(box_convert(decoded[b, ..., :4].reshape(-1, 4), "cxcywh", "xyxy"), true_xyxy[b])
                    ignore[b] = (iou.max(1).values > ignore_iou).view(len(group), h, w)
        index = (target["image"].to(device), target["anchor"].to(device), target["row"].to(device), target["col"].to(device))
        if len(target["image"]):
            chosen = p[index]
            scale = target["scale"].to(device)
            box = box + (scale[:, None] * (bce(chosen[:, :2], target["txy"].to(device), reduction="none")
                                           + (chosen[:, 2:4] - target["twh"].to(device)) ** 2)).sum()
            cls = cls + bce(chosen[:, 5:], torch.zeros_like(chosen[:, 5:]).index_fill_(1, torch.tensor([0], device=device), 1.0),
                            reduction="sum")
            obj_target[index] = 1.0
            ignore[index] = False
        weight = (~ignore).float()
        obj = obj + (bce(p[..., 4], obj_target, reduction="none") * weight).sum()
    return {"box": box / batch, "objectness": obj / batch, "class": cls / batch}


def yolo_step(model: YOLOv3Tiny, batch, device: torch.device):
    """The step function of YOLOv3 for :func:`tlutils.core.train.fit`: the sum of :func:`yolo_loss`.

    Args:
        model: A :class:`YOLOv3Tiny`.
        batch: A list of ``(image, boxes)`` pairs (``H x W x 3`` uint8, all of one size, and a
            ``K x 4`` box array in its pixels), as :class:`tlutils.topics.detection.DetectionBatches`
            yields; or a list of ``(features, boxes)`` pairs whose features are the two maps of
            :meth:`YOLOv3Tiny.head_features` for one image (cached, the rest of the network frozen)
            together with the input size: ``((large, small), (height, width))``.
    """
    from tlutils.core.train import Loss

    first = batch[0][0]
    if isinstance(first, tuple):                      # cached head features
        size = first[1]
        features = [torch.stack([item[0][0][i] for item in batch]).to(device) for i in range(2)]
        raw = model.outputs_from(features)
    else:
        images = [np.asarray(image) for image, _ in batch]
        if any(image.ndim != 3 or image.shape != images[0].shape for image in images):
            raise ValueError("yolo_step needs H x W x 3 images, all of the same size, in a batch")
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255).to(device)
        size = tuple(x.shape[-2:])
        raw = model.raw_outputs(x)
    parts = yolo_loss(raw, [boxes for _, boxes in batch], size)
    return Loss(sum(parts.values()), {name: value.item() for name, value in parts.items()}, len(batch))
