"""The medical-imaging task of notebook 05: real BreastMNIST online, synthetic lesions offline.

Offline, :func:`make_lesion_task` paints synthetic lesions on patches of the real
retina photo shipped with scikit-image; the notebook labels this task synthetic.
Online, :func:`load_medical_task` reads the real BreastMNIST through the same call.
"""

from __future__ import annotations

import numpy as np

from tlutils.core.data import MedicalData, _breastmnist

LESION_CLASSES = ("healthy", "lesion")


MEDICAL_SOURCES = ("retina_synthetic", "breastmnist")


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
    from tlutils.core.data import load_photos

    if source not in MEDICAL_SOURCES:
        raise ValueError(f"unknown medical source {source!r}; choose one of {MEDICAL_SOURCES}")
    if source == "breastmnist":
        return _breastmnist(split)
    photo = load_photos(["retina"])["retina"]
    return make_lesion_task(photo, n_images, size=size, split=split, seed=seed)
