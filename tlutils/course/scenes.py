"""The segmentation scenes of notebook 06: real Fashion-MNIST items pasted on real photos."""

from __future__ import annotations

from typing import Sequence

import numpy as np


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
