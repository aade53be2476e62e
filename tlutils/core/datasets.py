"""From arrays to batches: seeded splits, transforms, torch Datasets, collators and samplers.

Example:
    >>> train, val, test = train_val_test_split(labels, val_fraction=0.1, test_fraction=0.2, seed=0)
    >>> dataset = ArrayImageDataset(images[train], labels[train], image_transform(96))
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from tlutils.core.runtime import check_one_of

#: Channel means and standard deviations of ImageNet (torchvision's pre-trained models).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Normalisation of TensorFlow ports such as EfficientNet-Lite: inputs scaled to [-1, 1].
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


def content_hash(*parts: Any) -> str:
    """A short sha256 of arrays, tensors, texts and numbers, for cache keys: equal content, equal hash.

    Arrays and tensors are hashed by dtype, shape and raw bytes (no copy beyond moving a
    tensor to the CPU); lists, tuples and dicts are hashed element by element.

    Raises:
        TypeError: a part is of a kind that has no stable content (an arbitrary object).

    Example:
        >>> content_hash(np.arange(3), "a") == content_hash(np.arange(3), "a")
        True
    """
    digest = hashlib.sha256()
    for part in parts:
        _hash_into(digest, part)
    return digest.hexdigest()[:16]


def _hash_into(digest, part: Any) -> None:
    """Feed one part into ``digest``, tagged with its kind so that ``[1]`` and ``"1"`` differ."""
    if isinstance(part, torch.Tensor):
        part = part.detach().cpu().contiguous()
        digest.update(f"tensor{part.dtype}{tuple(part.shape)}".encode())
        digest.update(part.reshape(-1).view(torch.uint8).numpy().tobytes() if part.numel() else b"")
    elif isinstance(part, np.ndarray) and part.dtype != object:
        digest.update(f"array{part.dtype.str}{part.shape}".encode())
        digest.update(np.ascontiguousarray(part).tobytes())
    elif isinstance(part, (str, bytes)):
        data = part.encode("utf-8", "surrogatepass") if isinstance(part, str) else part
        digest.update(f"{type(part).__name__}{len(data)}:".encode() + data)
    elif part is None or isinstance(part, (bool, int, float, np.generic)):
        digest.update(f"{type(part).__name__}:{part!r};".encode())
    elif isinstance(part, dict):
        digest.update(f"dict{len(part)}".encode())
        for key in sorted(part, key=str):
            _hash_into(digest, str(key))
            _hash_into(digest, part[key])
    elif isinstance(part, (list, tuple, np.ndarray)) or _is_pil_image(part):
        if _is_pil_image(part):
            part = [part.mode, np.asarray(part)]
        digest.update(f"seq{len(part)}".encode())
        for item in part:
            _hash_into(digest, item)
    else:
        raise TypeError(f"cannot hash a {type(part).__name__} by its content")


def _is_pil_image(value: Any) -> bool:
    return hasattr(value, "convert") and hasattr(value, "mode") and hasattr(value, "size")


def describe(obj: Any) -> str:
    """``repr(obj)`` without memory addresses: the same configuration gives the same text in every process."""
    return re.sub(r" (object )?at 0x[0-9a-fA-F]+", "", repr(obj))


def as_class_labels(labels: Any, what: str = "labels") -> np.ndarray:
    """Check that ``labels`` are class indices (0, 1, 2, ...) and return them as ``int64``.

    Whole-number floats (``1.0``) are accepted; anything that would be silently changed by a
    cast to integers (``1.7``, ``NaN``, ``"cat"``, negative numbers) is refused.

    Args:
        labels: One label per example (list, numpy array or tensor).
        what: The argument's name, used in the error message.

    Raises:
        TypeError: ``labels`` is a single string or holds non-numbers.
        ValueError: the labels are not a 1-D sequence of non-negative whole numbers.
    """
    if isinstance(labels, str):
        raise TypeError(f"{what} is a single string ({labels[:30]!r}); pass one integer label per example")
    array = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"{what} must be a 1-D sequence of class indices, got shape {array.shape}; "
                         "for one-hot labels pass labels.argmax(1)")
    if array.dtype.kind in "USO":
        example = next((x for x in array.tolist() if not isinstance(x, int)), None)
        raise TypeError(f"{what} must be integer class indices, got {type(example).__name__} values such as "
                        f"{example!r}; map names to numbers first, e.g. classes = sorted(set(labels)) and "
                        "labels = [classes.index(name) for name in labels]")
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array) | (array != np.round(array))
        if bad.any():
            raise ValueError(f"{what} must be whole numbers (class indices), got {array[bad][0].item()!r} at index "
                             f"{int(np.flatnonzero(bad)[0])}; a cast to int would silently change it: fix the labels "
                             "(or round them yourself if that is really what you mean)")
    elif array.dtype.kind not in "iub":
        raise TypeError(f"{what} must be integer class indices, got dtype {array.dtype}")
    array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise ValueError(f"{what} must be class indices 0, 1, 2, ..., got {int(array.min())} at index "
                         f"{int(np.argmin(array))}; remap the classes to start at 0")
    return array


def check_texts(texts: Any, what: str = "texts") -> list[str]:
    """Check that ``texts`` is a non-empty sequence of strings and return it as a list.

    Raises:
        TypeError: a single string was passed (it would become one text per character), or an
            item is not a string (a missing value read as ``NaN``, a number, ``None``).
        ValueError: the sequence is empty.
    """
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{what} is a single string; pass a list of texts, e.g. [{texts[:30]!r}] "
                        "(a string would be split into one text per character)")
    texts = list(texts)
    if not texts:
        raise ValueError(f"{what} is empty: pass at least one text")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{what}[{index}] is {type(text).__name__} {text!r}, not a string; drop or fill "
                            "missing texts first (pandas: df['text'].fillna(''))")
    return texts


def _as_labels(labels: Any) -> np.ndarray:
    """Return labels as a 1-D numpy array, refusing empty or multi-dimensional input."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D sequence, got shape {labels.shape}")
    return labels


def balanced_subset(labels: Any, n_per_class: int, seed: int) -> np.ndarray:
    """Pick ``n_per_class`` random examples of every class.

    Args:
        labels: 1-D labels (ints or strings), one per example.
        n_per_class: How many examples to take from each class.
        seed: Random seed; the same seed always gives the same subset.

    Returns:
        Sorted ``int64`` indices into ``labels`` (``n_per_class x classes`` of them).

    Raises:
        ValueError: ``labels`` is empty, ``n_per_class`` < 1, or a class has fewer
            than ``n_per_class`` examples (the message names it).

    Example:
        >>> idx = balanced_subset([0, 0, 1, 1, 1], n_per_class=2, seed=0)
        >>> len(idx)
        4
    """
    labels = _as_labels(labels)
    if int(n_per_class) != n_per_class or n_per_class < 1:
        raise ValueError(f"n_per_class must be a positive integer, got {n_per_class!r}")
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < n_per_class:
        small = ", ".join(f"{c.item()!r} ({n})" for c, n in zip(classes, counts) if n < n_per_class)
        raise ValueError(f"n_per_class={n_per_class} but these classes have fewer examples: {small}")
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(labels == c), int(n_per_class), replace=False) for c in classes]
    return np.sort(np.concatenate(picks)).astype(np.int64)


def _split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Round the validation and test sizes of a group of ``n`` (half rounds up)."""
    return int(n * val_fraction + 0.5), int(n * test_fraction + 0.5)


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    """Both fractions in [0, 1) and leaving something to train on."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be below 1 (nothing left to "
                         f"train on), got {val_fraction} + {test_fraction}")


def train_val_test_split(n_or_labels: int | Any, val_fraction: float = 0.1,
                         test_fraction: float = 0.1, seed: int = 0,
                         stratify: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split example indices into train, validation and test sets, fixed by ``seed``.

    Args:
        n_or_labels: The number of examples, or their 1-D labels. With labels and
            ``stratify=True`` every class is split in the same proportions (sizes
            rounded per class); with a number the split is plainly random.
        val_fraction: Share of examples for validation, in [0, 1).
        test_fraction: Share of examples for testing, in [0, 1).
        seed: Random seed; the same seed (and input) always gives the same split.
        stratify: Split each class separately (only used when labels are given).

    Returns:
        ``(train, val, test)`` sorted ``int64`` index arrays that together cover
        every example once.

    Raises:
        ValueError: Bad fractions, no examples, or a requested set would be empty.

    Example:
        >>> train, val, test = train_val_test_split(y, 0.1, 0.2, seed=0)
    """
    _check_fractions(val_fraction, test_fraction)
    if isinstance(n_or_labels, (int, np.integer)):
        if n_or_labels < 1:
            raise ValueError(f"the number of examples must be positive, got {n_or_labels}")
        groups = [np.arange(int(n_or_labels))]
    else:
        labels = _as_labels(n_or_labels)
        groups = [np.flatnonzero(labels == c) for c in np.unique(labels)] if stratify \
            else [np.arange(len(labels))]
    rng = np.random.default_rng(seed)
    parts = [_split_group(rng.permutation(group), val_fraction, test_fraction) for group in groups]
    train, val, test = (np.sort(np.concatenate(sets)).astype(np.int64) for sets in zip(*parts))
    _check_not_empty(val, test, val_fraction, test_fraction, len(train) + len(val) + len(test))
    return train, val, test


def _split_group(shuffled: np.ndarray, val_fraction: float, test_fraction: float):
    """Cut one shuffled group of indices into (train, val, test)."""
    n_val, n_test = _split_counts(len(shuffled), val_fraction, test_fraction)
    return shuffled[n_val + n_test:], shuffled[:n_val], shuffled[n_val:n_val + n_test]


def _check_not_empty(val: np.ndarray, test: np.ndarray, val_fraction: float,
                     test_fraction: float, n: int) -> None:
    """A non-zero fraction that rounds to an empty set is almost surely a mistake."""
    for name, part, fraction in (("validation", val, val_fraction), ("test", test, test_fraction)):
        if fraction > 0 and len(part) == 0:
            raise ValueError(f"a {name} fraction of {fraction} of {n} examples gives an empty "
                             f"{name} set; use more examples or a larger fraction")


class ToRGBTensor:
    """Turn a ``uint8`` grey or RGB image (numpy or PIL) into a ``3 x H x W`` uint8 tensor.

    Grey images are repeated to three channels because pre-trained models expect
    RGB; an alpha channel is dropped.
    """

    def __call__(self, image: Any) -> torch.Tensor:
        if hasattr(image, "convert") and hasattr(image, "mode"):  # a PIL image
            image = np.asarray(image.convert("RGB"))
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            kind = getattr(image, "dtype", type(image).__name__)
            raise TypeError(f"expected a uint8 numpy array or a PIL image, got {kind}; "
                            "convert floats in [0, 1] with (x * 255).round().astype(np.uint8)")
        if image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[2] not in (1, 3, 4):
            raise ValueError(f"expected an H x W x C image (channels last), got shape {image.shape}, which looks "
                             "channel-first (C x H x W); transpose it with image.transpose(1, 2, 0)")
        if image.ndim == 3 and image.shape[2] in (1, 3, 4):
            image = image[:, :, 0] if image.shape[2] == 1 else image[:, :, :3]
        # np.array copies: PIL arrays and cached arrays are read-only, torch wants writable.
        if image.ndim == 2:
            return torch.from_numpy(np.array(image)).unsqueeze(0).repeat(3, 1, 1)
        if image.ndim == 3:
            return torch.from_numpy(np.array(image)).permute(2, 0, 1)
        raise ValueError(f"expected an H x W or H x W x 3 image, got shape {image.shape}")


def image_transform(size: int, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD, train: bool = False,
                    flip: bool = True) -> Callable[[Any], torch.Tensor]:
    """Build the transform that fits images to a pre-trained model's input.

    Args:
        size: Output height and width in pixels (224 for ImageNet models; 96 is a
            good compromise on a CPU).
        mean: Per-channel mean the model was trained with, e.g. :data:`IMAGENET_MEAN`.
        std: Per-channel standard deviation, e.g. :data:`IMAGENET_STD`.
        train: Add light augmentation (random resized crop of 70-100 % of the image,
            random horizontal flip); otherwise resize the shorter side and centre-crop.
        flip: Allow the horizontal flip when ``train`` is set; turn it off for
            digits and text, where a mirror image is a different thing.

    Returns:
        A callable mapping a ``uint8`` grey or RGB image (numpy or PIL) to a
        normalised ``float32`` tensor ``3 x size x size``. It can be pickled, so it
        works with ``DataLoader(num_workers > 0)``.

    Example:
        >>> tf = image_transform(96, IMAGENET_MEAN, IMAGENET_STD)
        >>> tf(np.zeros((28, 28), np.uint8)).shape
        torch.Size([3, 96, 96])
    """
    from torchvision.transforms import v2

    if int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"mean and std need 3 values each (std > 0), got {mean!r} and {std!r}")
    if train:
        geometry = [v2.RandomResizedCrop(size, scale=(0.7, 1.0), antialias=True)]
        geometry += [v2.RandomHorizontalFlip()] if flip else []
    else:
        geometry = [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    return v2.Compose([ToRGBTensor(), *geometry, v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(list(mean), list(std))])


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
    _check_channels_last(images)
    batch = torch.from_numpy(np.array(images)).float().div(255)
    batch = batch[:, None].expand(-1, 3, -1, -1) if batch.ndim == 3 else batch.permute(0, 3, 1, 2)
    if size is not None and batch.shape[-1] != size:
        batch = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean_t = torch.tensor(mean, dtype=torch.float32)[None, :, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[None, :, None, None]
    return ((batch - mean_t) / std_t).contiguous()


def _check_channels_last(images: np.ndarray) -> None:
    """Refuse an ``N x C x H x W`` batch (or one with an alpha channel) where ``N x H x W x 3`` is expected."""
    if images.ndim != 4 or images.shape[-1] in (1, 3):
        return
    if images.shape[1] in (1, 3, 4):
        raise ValueError(f"expected N x H x W x 3 images (channels last), got shape {images.shape}, which looks "
                         "channel-first (N x C x H x W); transpose it with images.transpose(0, 2, 3, 1)")
    hint = "; drop the alpha channel with images[..., :3]" if images.shape[-1] == 4 else ""
    raise ValueError(f"expected N x H x W x 3 (or grey N x H x W) images, got shape {images.shape}{hint}")


class ArrayImageDataset(Dataset):
    """A torch Dataset over in-memory images, for example from :func:`load_fashion_mnist`.

    Args:
        images: ``N x H x W`` or ``N x H x W x 3`` ``uint8`` array, or a list of images.
        labels: ``N`` integer labels, or ``None`` for unlabelled data (inference).
        transform: Applied to each image, e.g. :func:`image_transform`; ``None``
            returns the image as a tensor unchanged.

    Example:
        >>> ds = ArrayImageDataset(x, y, image_transform(96, IMAGENET_MEAN, IMAGENET_STD))
        >>> image, label = ds[0]
    """

    def __init__(self, images: Sequence[Any] | np.ndarray, labels: Sequence[int] | None = None,
                 transform: Callable[[Any], Any] | None = None):
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if isinstance(images, np.ndarray) and images.dtype != object:
            if images.ndim not in (3, 4):
                raise ValueError(f"expected N x H x W or N x H x W x 3 images, got shape {images.shape}; "
                                 "reshape flat rows first, e.g. images.reshape(-1, 28, 28)")
            _check_channels_last(images)
        self.images = images
        self.labels = None if labels is None else as_class_labels(labels)
        self.transform = transform

    def fingerprint(self) -> str:
        """A content hash of the images, the labels and the transform's settings (for feature caches)."""
        return content_hash("ArrayImageDataset", self.images, self.labels, describe(self.transform))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        """Return ``(image, label)``, or only the image when there are no labels."""
        image = self.images[index]
        image = self.transform(image) if self.transform is not None else torch.tensor(np.asarray(image))
        return image if self.labels is None else (image, int(self.labels[index]))


def image_loader(images: Sequence[Any] | np.ndarray, labels: Sequence[int] | None, transform: Callable | None,
                 batch_size: int = 64, shuffle: bool = False, seed: int | None = None) -> DataLoader:
    """A DataLoader over in-memory images (:class:`ArrayImageDataset`), reshuffled by a seeded generator.

    Args:
        images, labels, transform: As for :class:`ArrayImageDataset`.
        batch_size: Images per batch.
        shuffle: Reshuffle every epoch; the order depends only on ``seed``.
        seed: Seeds the shuffling (``None``: PyTorch's global generator).

    Example:
        >>> train = image_loader(x, y, image_transform(64), 32, shuffle=True, seed=0)
    """
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(ArrayImageDataset(images, labels, transform), batch_size=batch_size, shuffle=shuffle,
                      generator=generator)


class TextDataset(Dataset):
    """Texts tokenised once with a Hugging Face tokenizer, padded per batch.

    Each item is a dict of ``input_ids``, ``attention_mask`` (1-D long tensors,
    truncated to ``max_length``) and ``labels``. Use :attr:`collate` as the
    DataLoader's ``collate_fn``: with ``padding="longest"`` it pads each batch to its
    longest text, which is much faster than padding everything to ``max_length``.

    Args:
        texts: The texts.
        labels: One integer label per text, or ``None`` for inference.
        tokenizer: A Hugging Face tokenizer (``AutoTokenizer.from_pretrained(...)``).
        max_length: Longest token sequence kept; longer texts are truncated.
        padding: ``"longest"`` (per batch) or ``"max_length"`` (always ``max_length``).

    Example:
        >>> ds = TextDataset(texts, labels, tokenizer, max_length=64)
        >>> loader = DataLoader(ds, batch_size=16, shuffle=True, collate_fn=ds.collate)
        >>> batch = next(iter(loader))   # input_ids, attention_mask, labels
    """

    def __init__(self, texts: Sequence[str], labels: Sequence[int] | None, tokenizer: Any,
                 max_length: int = 128, padding: str = "longest"):
        texts = check_texts(texts)
        if labels is not None and len(labels) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no padding token; for GPT-style models set "
                             "tokenizer.pad_token = tokenizer.eos_token first")
        check_one_of(padding, ("longest", "max_length"), "padding")
        encoded = tokenizer(texts, truncation=True, max_length=max_length)
        self.input_ids = encoded["input_ids"]
        self.labels = None if labels is None else as_class_labels(labels)
        self.pad_to = max_length if padding == "max_length" else None
        self.collate = text_collator(tokenizer.pad_token_id, tokenizer.padding_side, self.pad_to)

    def fingerprint(self) -> str:
        """A content hash of the token ids (texts, tokenizer and truncation), labels and padding."""
        lengths = np.array([len(ids) for ids in self.input_ids], dtype=np.int64)
        flat = np.fromiter((token for ids in self.input_ids for token in ids), dtype=np.int64, count=int(lengths.sum()))
        return content_hash("TextDataset", lengths, flat, self.labels, self.pad_to, self.collate.padding_side,
                            self.collate.pad_values)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = torch.tensor(self.input_ids[index], dtype=torch.long)
        item = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if self.labels is not None:
            item["labels"] = torch.tensor(self.labels[index])
        return item


class PaddingCollator:
    """The one padding collator: pad the sequences of a list of items into one batch of tensors.

    Keys named in ``pad_values`` hold 1-D sequences and are padded with their value; every
    other key (a class label, a start/end pair) is stacked as it is.

    Args:
        pad_values: Key -> padding value, e.g. ``{"input_ids": tokenizer.pad_token_id,
            "attention_mask": 0}``; a causal LM pads its ``labels`` with -100.
        padding_side: ``"right"`` (encoders such as BERT) or ``"left"``, as the
            tokenizer's ``padding_side`` says.
        pad_to: Pad every batch to this length; ``None`` pads to the longest item.

    Example:
        >>> collate = PaddingCollator({"input_ids": 0, "attention_mask": 0})
        >>> collate([{"input_ids": torch.tensor([5, 6]), "attention_mask": torch.tensor([1, 1])},
        ...          {"input_ids": torch.tensor([7]), "attention_mask": torch.tensor([1])}])["input_ids"]
        tensor([[5, 6],
                [7, 0]])
    """

    def __init__(self, pad_values: dict[str, int], padding_side: str = "right", pad_to: int | None = None):
        check_one_of(padding_side, ("right", "left"), "padding side")
        if not pad_values:
            raise ValueError("pad_values must name at least one key to pad, e.g. {'input_ids': pad_token_id}")
        self.pad_values = dict(pad_values)
        self.padding_side = padding_side
        self.pad_to = pad_to

    def _pad(self, rows: list[torch.Tensor], value: int) -> torch.Tensor:
        width = self.pad_to or max(len(row) for row in rows)
        out = torch.full((len(rows), width), value, dtype=torch.long)
        for i, row in enumerate(rows):
            if self.padding_side == "right":
                out[i, :len(row)] = row
            else:
                out[i, width - len(row):] = row
        return out

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        missing = [key for key in self.pad_values if key not in items[0]]
        if missing:
            raise KeyError(f"the items have no {missing}; they have {sorted(items[0])}")
        batch = {key: self._pad([item[key] for item in items], value) for key, value in self.pad_values.items()}
        for key in items[0]:
            if key not in batch:
                batch[key] = torch.stack([item[key] for item in items])
        return batch


def text_collator(pad_token_id: int, padding_side: str = "right", pad_to: int | None = None) -> PaddingCollator:
    """The collator of :class:`TextDataset`: pads ``input_ids`` and ``attention_mask``, stacks ``labels``."""
    return PaddingCollator({"input_ids": pad_token_id, "attention_mask": 0}, padding_side, pad_to)


class LengthGroupedBatchSampler(Sampler):
    """Random batches of similar-length examples, so that padding per batch stays small.

    Each epoch the examples are shuffled, cut into groups of ``group_batches`` batches,
    sorted by length inside each group and cut into batches; the batch order is then
    shuffled again. Training stays random, but a batch of short texts is no longer padded
    to the length of one long text (notebook 07 counts the tokens this saves).

    Args:
        lengths: Length (in tokens) of every example.
        batch_size: Examples per batch.
        seed: Seeds the shuffling; the same seed gives the same batches, epoch after epoch.
        group_batches: Batches per sorted group (larger = less padding, less randomness).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, group_batches: int = 16):
        if batch_size < 1 or group_batches < 1:
            raise ValueError(f"batch_size and group_batches must be positive, got {batch_size} and {group_batches}")
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.group_size = batch_size * group_batches
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=self.generator).numpy()
        batches = []
        for start in range(0, len(order), self.group_size):
            group = order[start:start + self.group_size]
            group = group[np.argsort(-self.lengths[group], kind="stable")]
            batches += [group[i:i + self.batch_size].tolist() for i in range(0, len(group), self.batch_size)]
        for index in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[index]


def _padded_loader(dataset: Dataset, lengths: Sequence[int], batch_size: int, shuffle: bool, seed: int | None,
                   group_by_length: bool) -> DataLoader:
    """A DataLoader with the dataset's own ``collate``; shuffled batches may be grouped by length."""
    if shuffle and group_by_length:
        sampler = LengthGroupedBatchSampler(lengths, batch_size, seed=0 if seed is None else seed)
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=dataset.collate)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=dataset.collate, generator=generator)


def text_loader(texts: Sequence[str], labels: Sequence[int] | None, tokenizer: Any, max_length: int = 64,
                batch_size: int = 16, shuffle: bool = False, seed: int | None = None,
                group_by_length: bool = False) -> DataLoader:
    """A DataLoader of tokenised texts (a :class:`~tlutils.core.datasets.TextDataset`), padded per batch.

    Args:
        texts: The texts.
        labels: One integer label per text, or ``None``.
        tokenizer: A Hugging Face tokenizer.
        max_length: Longer texts are truncated to this many tokens.
        batch_size: Texts per batch.
        shuffle: Shuffle every epoch (training); the order is fixed by ``seed``.
        seed: Seed of the shuffling generator.
        group_by_length: With ``shuffle``, batch texts of similar length together
            (:class:`LengthGroupedBatchSampler`): the same training, much less padding.
    """
    dataset = TextDataset(texts, labels, tokenizer, max_length=max_length)
    return _padded_loader(dataset, [len(ids) for ids in dataset.input_ids], batch_size, shuffle, seed,
                          group_by_length)
