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
        for i, block in enumerate(self.backbone):
            x = block(x)
            if i == 4:
                route = x                                # layer 8: the stride-16 map the small head reuses
            # Darknet's last pool (size 2, stride 1) pads right and bottom so that the map stays 13 x 13
            x = F.max_pool2d(x, 2, 2) if i < 5 else F.max_pool2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), 2, 1)
        neck = self.neck(self.conv_1024(x))
        small = torch.cat([F.interpolate(self.reduce(neck), scale_factor=2, mode="nearest"), route], 1)
        return [self.head_large(neck), self.head_small(small)]

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
