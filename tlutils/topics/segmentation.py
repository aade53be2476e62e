"""Semantic segmentation with a pre-trained encoder: a U-Net on MobileNetV2."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tlutils.core.features import feature_loader
from tlutils.core.metrics import mask_iou
from tlutils.core.runtime import seeded
from tlutils.core.train import fit

#: MobileNetV2 ``features`` indices whose outputs feed the U-Net decoder
#: (strides 2, 4, 8, 16 and 32) and their channel counts.
UNET_SKIPS = (1, 3, 6, 13, 18)
UNET_SKIP_CHANNELS = (16, 24, 32, 96, 1280)


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
    from tlutils.core.models import load_mobilenet_v2

    return MobileNetV2UNet(load_mobilenet_v2(pretrained=pretrained).features, num_classes)


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


@torch.no_grad()
def predict_masks(model: nn.Module, images: torch.Tensor, device: torch.device | None = None,
                  batch_size: int = 32, threshold: float = 0.5) -> np.ndarray:
    """Binary masks from a one-channel segmenter: ``N x H x W`` boolean."""
    from tlutils.core.runtime import get_device

    device = device or get_device()
    model.to(device).eval()
    masks = [model(images[i:i + batch_size].to(device)).sigmoid()[:, 0].cpu() > threshold
             for i in range(0, len(images), batch_size)]
    return torch.cat(masks).numpy()


def train_segmenter(pretrained: bool, train_images: torch.Tensor, train_masks: torch.Tensor,
                    test_images: torch.Tensor, test_masks: np.ndarray, *, epochs: int, lr: float, batch_size: int,
                    seed: int, device: torch.device | None = None, progress: bool = False) -> dict:
    """Train one U-Net (:func:`build_mobilenet_unet`) with :func:`dice_bce_loss` and score it on test masks.

    The seed sets the decoder's (and a random encoder's) initial weights and the batch order, so
    the pre-trained and the random encoder at one seed differ only in the encoder's start.

    Args:
        pretrained: ImageNet encoder (``True``) or random (``False``).
        train_images, train_masks: ``N x 3 x H x W`` normalised images and ``N x 1 x H x W`` float masks.
        test_images, test_masks: The test images and their ``N x H x W`` boolean masks.
        epochs, lr, batch_size: The recipe, the same for both encoders.
        seed: The run's seed.
        device: Where to train.
        progress: Show the training progress bar.

    Returns:
        ``{"model", "history", "masks", "iou"}``: the trained model, its History, the predicted test
        masks and their pooled IoU with the true ones.
    """
    if train_masks.shape[0] != train_images.shape[0] or train_masks.dim() != 4 or train_masks.shape[1] != 1:
        raise ValueError(f"expected N x 1 x H x W training masks for the {train_images.shape[0]} images, "
                         f"got {tuple(train_masks.shape)}")
    with seeded(seed):
        model = build_mobilenet_unet(num_classes=1, pretrained=pretrained)
    loader = feature_loader(train_images, train_masks, batch_size, shuffle=True, seed=seed)
    history = fit(model, loader, epochs=epochs, lr=lr, loss_fn=dice_bce_loss, metrics=(), device=device, seed=seed,
                  progress=progress)
    masks = predict_masks(model, test_images, device)
    return {"model": model, "history": history, "masks": masks, "iou": mask_iou(masks, test_masks)}
