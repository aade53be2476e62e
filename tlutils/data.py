"""Data set loaders, balanced subsets, seeded splits and model-fitting transforms.

Every loader finds its files through :func:`tlutils.assets.resolve` (mirror,
installed package, cache or online source) and reads them directly; the packages
that merely carry data files are never imported. Loaders return plain data:

* images as ``uint8`` numpy arrays (``N x H x W`` grey or ``H x W x 3`` RGB),
* texts as ``list[str]``,
* labels as ``int64`` numpy arrays together with the list of class names.

Parsed arrays are kept in memory (:func:`functools.lru_cache`), so a notebook can
call a loader in every cell cheaply; each call returns fresh copies, so changing a
returned array never corrupts the cache.

Example:
    >>> from torch.utils.data import DataLoader
    >>> x, y, names = load_fashion_mnist("train")
    >>> idx = balanced_subset(y, n_per_class=100, seed=0)
    >>> tf = image_transform(96, IMAGENET_MEAN, IMAGENET_STD)
    >>> loader = DataLoader(ArrayImageDataset(x[idx], y[idx], tf), batch_size=32)
"""

from __future__ import annotations

import gzip
import html
import io
import pickle
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from tlutils.assets import resolve
from tlutils.utils import check_one_of

# ------------------------------------------------------------------ constants

#: Channel means and standard deviations of ImageNet (torchvision's pre-trained models).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Normalisation of TensorFlow ports such as EfficientNet-Lite: inputs scaled to [-1, 1].
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DIGIT_CLASSES = tuple(str(digit) for digit in range(10))
REVIEW_CLASSES = ("rotten", "fresh")
TWEET_CLASSES = ("negative", "neutral", "positive")

#: IDX file names per split (the names every MNIST-style download uses).
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
#: IDX type codes (third byte of the magic number) and the numpy dtype they hold.
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
#: The classic mnist.pkl.gz splits its 60k training digits into 50k train + 10k val.
MNIST_TRAIN_SIZE = 50_000

#: The only globals a pickle of numpy arrays needs; anything else is refused.
#: ``numpy.core`` (numpy 1) and ``numpy._core`` (numpy 2) both map to this numpy's
#: own ``_reconstruct`` (taken from ``ndarray.__reduce__``, so no deprecated import).
SAFE_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): np.empty(0).__reduce__()[0],
    ("numpy._core.multiarray", "_reconstruct"): np.empty(0).__reduce__()[0],
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}

#: Real photos in scikit-image's data folder (name -> file). Synthetic test
#: patterns (checkerboards, logo, colour wheel) are left out on purpose.
SKIMAGE_PHOTOS = {
    "astronaut": "astronaut.png", "coffee": "coffee.png", "chelsea": "chelsea.png",
    "rocket": "rocket.jpg", "motorcycle": "motorcycle_left.png", "horse": "horse.png",
    "retina": "retina.jpg", "ihc": "ihc.png", "camera": "camera.png",
    "hubble": "hubble_deep_field.jpg", "brick": "brick.png", "grass": "grass.png",
    "gravel": "gravel.png",
}
#: Photos bundled with scikit-learn (name -> file for ``load_sample_image``).
SKLEARN_PHOTOS = {"china": "china.jpg", "flower": "flower.jpg"}

FSDD_NAME = re.compile(r"^(?P<digit>\d)_(?P<speaker>[a-z]+)_(?P<take>\d+)\.wav$")
#: Upstream FSDD split: takes 0-4 of every speaker and digit are the test set.
FSDD_TEST_TAKES = 5


class ImageData(NamedTuple):
    """Images with integer labels (unpacks as ``images, labels, class_names``)."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]


class TextData(NamedTuple):
    """Texts with integer labels (unpacks as ``texts, labels, class_names``)."""

    texts: list[str]
    labels: np.ndarray
    class_names: list[str]


class NewsData(NamedTuple):
    """News articles (unpacks as ``texts, labels, class_names, headlines``)."""

    texts: list[str]
    labels: np.ndarray
    class_names: list[str]
    headlines: list[str]


class DataFormatError(ValueError):
    """A data file is corrupted or not in the expected format."""


# ------------------------------------------------------------------ helpers


def _image_data(images: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> ImageData:
    """Wrap cached arrays in fresh copies so callers cannot change the cache."""
    return ImageData(images.copy(), labels.copy(), list(names))


def _text_data(texts: Sequence[str], labels: np.ndarray, names: Sequence[str]) -> TextData:
    """Wrap cached texts and labels in fresh containers (see :func:`_image_data`)."""
    return TextData(list(texts), labels.copy(), list(names))


def _read_only(array: np.ndarray) -> np.ndarray:
    """Mark a cached array read-only: a bug that writes into it fails loudly."""
    array.setflags(write=False)
    return array


# ------------------------------------------------------------------ IDX files


def _idx_header(data: bytes, path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    """Parse an IDX header; return (dtype, shape, offset of the first value)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise DataFormatError(
            f"{path} is not an IDX file: bad magic number {data[:4].hex() or '(empty)'} "
            "(expected 0000 then a type code such as 08 and the number of dimensions)")
    ndim = data[3]
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise DataFormatError(f"{path}: IDX header truncated ({len(data)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    return np.dtype(IDX_DTYPES[data[2]]), shape, offset


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not.

    Args:
        path: The ``.gz`` or uncompressed IDX file.

    Returns:
        The array with the shape the header declares, in native byte order.

    Raises:
        DataFormatError: The file is not IDX, is truncated, or is a broken gzip.
    """
    path = Path(path)
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise DataFormatError(f"{path}: cannot decompress ({error}); the file is corrupted") from None
    dtype, shape, offset = _idx_header(data, path)
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - offset != expected:
        raise DataFormatError(f"{path}: header says shape {shape} ({expected} bytes of data) "
                              f"but the file holds {len(data) - offset}; it is truncated or corrupted")
    return np.frombuffer(data, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def _idx_file(folder: Path, name: str) -> Path:
    """Find ``name`` in ``folder``, also accepting the uncompressed variant."""
    for candidate in (folder / name, folder / name.removesuffix(".gz")):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{folder} has no {name} (nor an uncompressed copy)")


def _read_idx_pair(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read and cross-check the image and label files of one split."""
    image_name, label_name = IDX_FILES[split]
    images = read_idx(_idx_file(folder, image_name))
    labels = read_idx(_idx_file(folder, label_name)).astype(np.int64)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataFormatError(f"{folder}: {split} images {images.shape} and labels "
                              f"{labels.shape} do not match (expected N x H x W and N)")
    return images.astype(np.uint8), labels


# ------------------------------------------------------------------ Fashion-MNIST


@lru_cache(maxsize=4)
def _fashion_arrays(folder: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse one Fashion-MNIST split once per folder (cached, read-only)."""
    images, labels = _read_idx_pair(Path(folder), split)
    return _read_only(images), _read_only(labels)


def load_fashion_mnist(split: str = "train") -> ImageData:
    """Load Fashion-MNIST (Zalando): 28 x 28 grey clothing images in 10 classes.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).

    Returns:
        ``ImageData(images, labels, class_names)``: ``uint8`` array ``N x 28 x 28``
        (0 = background), ``int64`` labels 0-9 and the 10 class names.

    Raises:
        ValueError: ``split`` is not ``"train"`` or ``"test"``.
        DataFormatError: An IDX file is corrupted.

    Example:
        >>> x, y, names = load_fashion_mnist("test")
        >>> x.shape, names[y[0]]
        ((10000, 28, 28), 'Ankle boot')
    """
    check_one_of(split, ("train", "test"), "Fashion-MNIST split")
    images, labels = _fashion_arrays(str(resolve("fashion_mnist").path), split)
    return _image_data(images, labels, FASHION_CLASSES)


# ------------------------------------------------------------------ MNIST


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only rebuilds numpy arrays.

    Unpickling can run any function a pickle names (``os.system`` included), so a
    pickle we did not create ourselves is read with this class: it resolves only
    the names in :data:`SAFE_PICKLE_GLOBALS` and refuses every other one.
    """

    def find_class(self, module: str, name: str) -> Any:
        """Return an allowed numpy global or raise :class:`pickle.UnpicklingError`."""
        try:
            return SAFE_PICKLE_GLOBALS[(module, name)]
        except KeyError:
            allowed = ", ".join(f"{m}.{n}" for m, n in SAFE_PICKLE_GLOBALS)
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: this pickle may only contain numpy "
                f"arrays (allowed globals: {allowed})") from None


def load_numpy_pickle(file: io.BufferedIOBase, encoding: str = "latin1") -> Any:
    """Unpickle data made only of numpy arrays and plain Python containers.

    Args:
        file: An open binary file (for example from :func:`gzip.open`).
        encoding: How Python 2 byte strings are decoded; ``latin1`` keeps the raw
            bytes of numpy buffers intact.

    Returns:
        The unpickled object.

    Raises:
        pickle.UnpicklingError: The pickle names anything but numpy's array
            reconstruction (for example ``os.system``).
    """
    return RestrictedUnpickler(file, encoding=encoding).load()


def _mnist_split_from_pickle(pair: Any, name: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Check one (images, labels) pair of mnist.pkl.gz and convert it to uint8 28 x 28."""
    images, labels = pair if isinstance(pair, tuple) and len(pair) == 2 else (None, None)
    if not (isinstance(images, np.ndarray) and images.ndim == 2 and images.shape[1] == 784
            and len(labels) == len(images)):
        raise DataFormatError(f"{path}: the {name} split is not an N x 784 array with N labels")
    # Pixels are stored as k/256 (k = 0..255), so multiplying by 256 restores the bytes.
    pixels = np.clip(np.rint(images * 256.0), 0, 255).astype(np.uint8)
    return pixels.reshape(-1, 28, 28), np.asarray(labels, dtype=np.int64)


def _mnist_from_pickle(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read the deeplearning.net ``mnist.pkl.gz``: ((train), (val), (test)) pairs."""
    try:
        with gzip.open(path, "rb") as handle:
            content = load_numpy_pickle(handle)
    except (OSError, EOFError) as error:
        raise DataFormatError(f"{path}: cannot decompress ({error}); the file is corrupted") from None
    if not (isinstance(content, tuple) and len(content) == 3):
        raise DataFormatError(f"{path}: expected a (train, val, test) tuple, got {type(content).__name__}")
    names = ("train", "val", "test")
    return {name: _mnist_split_from_pickle(pair, name, path) for name, pair in zip(names, content)}


def _mnist_from_idx(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read MNIST IDX files, splitting the 60k training digits like mnist.pkl.gz."""
    train_x, train_y = _read_idx_pair(folder, "train")
    return {"train": (train_x[:MNIST_TRAIN_SIZE], train_y[:MNIST_TRAIN_SIZE]),
            "val": (train_x[MNIST_TRAIN_SIZE:], train_y[MNIST_TRAIN_SIZE:]),
            "test": _read_idx_pair(folder, "test")}


@lru_cache(maxsize=2)
def _mnist_arrays(location: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Parse MNIST once per location: a pickle file or a folder of IDX files."""
    path = Path(location)
    splits = _mnist_from_idx(path) if path.is_dir() else _mnist_from_pickle(path)
    return {name: (_read_only(x), _read_only(y)) for name, (x, y) in splits.items()}


def load_mnist(split: str = "train") -> ImageData:
    """Load MNIST handwritten digits as 28 x 28 ``uint8`` images (like Fashion-MNIST).

    The source is either the classic ``mnist.pkl.gz`` (read with
    :class:`RestrictedUnpickler`) or a folder of IDX files; both give the same split:
    the first 50,000 official training digits are ``train``, the last 10,000 ``val``.

    Args:
        split: ``"train"`` (50,000), ``"val"`` (10,000) or ``"test"`` (10,000).

    Returns:
        ``ImageData(images, labels, class_names)`` with class names ``"0"``-``"9"``.

    Raises:
        ValueError: ``split`` is not one of the three names.
        pickle.UnpicklingError: The pickle holds anything but numpy arrays.
        DataFormatError: A file is corrupted.
    """
    check_one_of(split, ("train", "val", "test"), "MNIST split")
    images, labels = _mnist_arrays(str(resolve("mnist").path))[split]
    return _image_data(images, labels, DIGIT_CLASSES)


# ------------------------------------------------------------------ digits, photos


@lru_cache(maxsize=2)
def _digits_arrays(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse optdigits ``digits.csv.gz``: 64 pixel columns (0-16) then the label."""
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 65:
        raise DataFormatError(f"{path}: expected 65 columns (64 pixels + label), got {table.shape}")
    return _read_only(table[:, :64].reshape(-1, 8, 8)), _read_only(table[:, 64])


def load_digits(as_uint8: bool = True) -> ImageData:
    """Load the UCI optical digits: 1,797 8 x 8 images, a real domain shift from MNIST.

    Args:
        as_uint8: Scale the original 0-16 ink counts to 0-255 ``uint8`` (like MNIST,
            ready for :func:`image_transform`); ``False`` keeps the 0-16 integers.

    Returns:
        ``ImageData(images, labels, class_names)``: ``1797 x 8 x 8`` images.
    """
    pixels, labels = _digits_arrays(str(resolve("digits").path))
    if as_uint8:
        pixels = np.rint(pixels * (255 / 16)).astype(np.uint8)
    return _image_data(pixels, labels, DIGIT_CLASSES)


def _to_rgb_array(image: Any) -> np.ndarray:
    """Convert a PIL image to ``H x W x 3`` uint8; transparency is composited on white."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "P"):
        # Dropping alpha would leave whatever colour hides under transparent pixels.
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        background.alpha_composite(image.convert("RGBA"))
        image = background
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


@lru_cache(maxsize=2)
def _photo_arrays(folder: str) -> dict[str, np.ndarray]:
    """Decode every known photo that is on disk (cached, read-only)."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    photos = {}
    for name, filename in SKIMAGE_PHOTOS.items():
        # Only files on disk: skimage.data would try to download the missing ones.
        if (Path(folder) / filename).exists():
            with Image.open(Path(folder) / filename) as image:
                photos[name] = _read_only(_to_rgb_array(image))
    for name, filename in SKLEARN_PHOTOS.items():
        # scikit-learn ships these two JPEGs in its wheel; this reads them from disk.
        photos[name] = _read_only(np.asarray(load_sample_image(filename), dtype=np.uint8))
    return photos


def load_photos(names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Load real photos for ImageNet demos (scikit-image and scikit-learn samples).

    Grey photos (camera, the brick/grass/gravel textures) are repeated to three
    channels and the horse silhouette is put on a white background, so every value
    is ``H x W x 3`` ``uint8``.

    Args:
        names: Photos to load, for example ``["chelsea", "coffee"]``; ``None`` loads
            every one on disk (see :data:`SKIMAGE_PHOTOS` and :data:`SKLEARN_PHOTOS`).

    Returns:
        A dict from photo name to image.

    Raises:
        ValueError: A name is unknown or its file is not on disk.
    """
    photos = _photo_arrays(str(resolve("photos").path))
    wanted = list(photos) if names is None else list(names)
    missing = [name for name in wanted if name not in photos]
    if missing:
        raise ValueError(f"unknown photo name(s) {missing}, or their file is not on disk; "
                         f"available: {', '.join(sorted(photos))}")
    return {name: photos[name].copy() for name in wanted}


# ------------------------------------------------------------------ text data sets


@lru_cache(maxsize=2)
def _rotten_tomatoes(path: str) -> tuple[tuple[str, ...], np.ndarray]:
    """Parse the corpus CSV (columns category, text, movie_name, has_plot_and_reviews)."""
    import pandas as pd

    table = pd.read_csv(path, usecols=["category", "text"])
    # The corpus mixes review snippets with plot summaries; only reviews have a label.
    reviews = table[table["category"].isin(REVIEW_CLASSES)].dropna(subset=["text"])
    labels = reviews["category"].map({name: i for i, name in enumerate(REVIEW_CLASSES)})
    return tuple(reviews["text"].astype(str)), _read_only(labels.to_numpy(np.int64))


def load_rotten_tomatoes() -> TextData:
    """Load Rotten Tomatoes review snippets (Pang & Lee), fresh vs rotten.

    The 1,097 plot summaries in the same file are dropped: they are not reviews.

    Returns:
        ``TextData(texts, labels, class_names)``: 12,808 snippets, label 0 =
        ``"rotten"`` (5,405), 1 = ``"fresh"`` (7,403), in file order.
    """
    texts, labels = _rotten_tomatoes(str(resolve("rotten_tomatoes").path))
    return _text_data(texts, labels, REVIEW_CLASSES)


def _clean_tweet(text: str) -> str:
    """Undo the HTML escaping of the Twitter API and unify line breaks."""
    return html.unescape(text).replace("\r\n", "\n").replace("\r", "\n")


@lru_cache(maxsize=2)
def _tweets(path: str) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Parse the tweet CSV (columns sentiment, confidence, text); return texts, labels, confidence."""
    import pandas as pd

    # The file is not UTF-8; latin-1 maps every byte, so reading never fails.
    table = pd.read_csv(path, encoding="latin-1")
    unknown = set(table["sentiment"]) - set(TWEET_CLASSES)
    if unknown:
        raise DataFormatError(f"{path}: unexpected sentiment values {sorted(map(str, unknown))}")
    labels = table["sentiment"].map({name: i for i, name in enumerate(TWEET_CLASSES)})
    texts = tuple(_clean_tweet(str(text)) for text in table["text"])
    confidence = table["confidence"].to_numpy(np.float64)
    return texts, _read_only(labels.to_numpy(np.int64)), _read_only(confidence)


def load_tweets_sentiment(min_confidence: float | None = None) -> TextData:
    """Load 38,158 tweets with 3-class sentiment (a domain shift from movie reviews).

    HTML entities (``&amp;``) are unescaped; odd byte sequences from the source's own
    encoding damage (emoji turned into symbols) are kept as they are.

    Args:
        min_confidence: Keep only tweets whose annotator confidence is at least this
            (0-1); tweets without a confidence value are then dropped too. ``None``
            keeps all.

    Returns:
        ``TextData(texts, labels, class_names)``: labels 0 negative, 1 neutral, 2 positive.

    Raises:
        ValueError: ``min_confidence`` is outside 0-1.
    """
    if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"min_confidence must be between 0 and 1 or None, got {min_confidence!r}")
    texts, labels, confidence = _tweets(str(resolve("tweets_sentiment").path))
    if min_confidence is None:
        return _text_data(texts, labels, TWEET_CLASSES)
    keep = np.flatnonzero(confidence >= min_confidence)  # NaN compares False: dropped
    return _text_data([texts[i] for i in keep], labels[keep], TWEET_CLASSES)


def _read_article(path: Path) -> str:
    """Read one BBC article: UTF-8, except a few files in Windows-1252 (a '£' byte)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("cp1252", errors="replace")
    return text.replace("\r\n", "\n").strip()


@lru_cache(maxsize=2)
def _bbc_news(folder: str) -> tuple[tuple[str, ...], np.ndarray, tuple[str, ...]]:
    """Read ``<topic>/NNN.txt`` files; topics are the subfolders in sorted order."""
    topics = tuple(sorted(p.name for p in Path(folder).iterdir() if p.is_dir()))
    texts, labels = [], []
    for label, topic in enumerate(topics):
        for path in sorted((Path(folder) / topic).glob("*.txt")):
            texts.append(_read_article(path))
            labels.append(label)
    if not texts:
        raise DataFormatError(f"{folder} holds no <topic>/NNN.txt articles")
    return tuple(texts), _read_only(np.array(labels, dtype=np.int64)), topics


def load_bbc_news() -> NewsData:
    """Load BBC News: 2,225 articles in 5 topics (Greene & Cunningham, 2006).

    Returns:
        ``NewsData(texts, labels, class_names, headlines)``: each text is the whole
        article with its headline as the first line; ``headlines`` holds that line
        alone. Topics are the folder names in alphabetical order: business,
        entertainment, politics, sports, tech.
    """
    texts, labels, topics = _bbc_news(str(resolve("bbc_news").path))
    headlines = [text.split("\n", 1)[0].strip() for text in texts]
    return NewsData(list(texts), labels.copy(), list(topics), headlines)


# ------------------------------------------------------------------ audio


def _fsdd_row(path: Path) -> dict | None:
    """Parse ``{digit}_{speaker}_{take}.wav`` into a table row (None for other files)."""
    match = FSDD_NAME.match(path.name)
    if match is None:
        return None
    take = int(match["take"])
    return dict(path=str(path), digit=int(match["digit"]), speaker=match["speaker"], take=take,
                split="test" if take < FSDD_TEST_TAKES else "train")


def load_fsdd(split: str = "all") -> "pandas.DataFrame":
    """List the Free Spoken Digit Dataset recordings (8 kHz mono WAV files).

    Upstream's split is used: takes 0-4 of every speaker and digit are the test set,
    the other takes train. Files whose names do not follow
    ``{digit}_{speaker}_{take}.wav`` are ignored.

    Args:
        split: ``"all"``, ``"train"`` or ``"test"``.

    Returns:
        A pandas DataFrame with columns ``path``, ``digit``, ``speaker``, ``take``,
        ``split``, sorted by speaker, digit and take. Read a row's audio with
        :func:`load_audio`.

    Raises:
        ValueError: Unknown ``split``.
        FileNotFoundError: The resolved folder has no recordings.

    Example:
        >>> table = load_fsdd("test")
        >>> wave = load_audio(table["path"][0], sample_rate=16000)
    """
    import pandas as pd

    check_one_of(split, ("all", "train", "test"), "FSDD split")
    folder = resolve("fsdd").path / "recordings"
    rows = [row for row in map(_fsdd_row, sorted(folder.glob("*.wav"))) if row is not None]
    if not rows:
        raise FileNotFoundError(f"no FSDD recordings ({{digit}}_{{speaker}}_{{take}}.wav) in {folder}")
    table = pd.DataFrame(rows).sort_values(["speaker", "digit", "take"], ignore_index=True)
    return table if split == "all" else table[table["split"] == split].reset_index(drop=True)


def read_mono(path: str | Path) -> tuple[torch.Tensor, int]:
    """A sound file as ``(float32 mono waveform, sample rate)``, channels averaged, not resampled."""
    import soundfile

    samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    return torch.from_numpy(samples).mean(dim=1), rate


def load_audio(path: str | Path, sample_rate: int = 16000) -> torch.Tensor:
    """Read a sound file as a mono float32 waveform at ``sample_rate``.

    Args:
        path: A WAV (or other soundfile-readable) file.
        sample_rate: Target rate in Hz; 16,000 is what Whisper and wav2vec 2.0 expect.

    Returns:
        A 1-D ``float32`` tensor in [-1, 1]; channels are averaged.

    Raises:
        ValueError: ``sample_rate`` is not a positive integer.
    """
    from torchaudio.functional import resample

    if not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    wave, rate = read_mono(path)
    return wave if rate == sample_rate else resample(wave, rate, sample_rate)


# ------------------------------------------------------------------ subsets and splits


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


# ------------------------------------------------------------------ image transforms


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
        self.images = images
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        """Return ``(image, label)``, or only the image when there are no labels."""
        image = self.images[index]
        image = self.transform(image) if self.transform is not None else torch.tensor(np.asarray(image))
        return image if self.labels is None else (image, int(self.labels[index]))


# ------------------------------------------------------------------ text for transformers


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
        if labels is not None and len(labels) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no padding token; for GPT-style models set "
                             "tokenizer.pad_token = tokenizer.eos_token first")
        check_one_of(padding, ("longest", "max_length"), "padding")
        encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
        self.input_ids = encoded["input_ids"]
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        pad_to = max_length if padding == "max_length" else None
        self.collate = TextCollator(tokenizer.pad_token_id, tokenizer.padding_side, pad_to)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = torch.tensor(self.input_ids[index], dtype=torch.long)
        item = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if self.labels is not None:
            item["labels"] = torch.tensor(self.labels[index])
        return item


class TextCollator:
    """Pad a list of :class:`TextDataset` items into one batch of tensors.

    Args:
        pad_token_id: The tokenizer's padding token id.
        padding_side: ``"right"`` (encoders such as BERT) or ``"left"``, as the
            tokenizer's ``padding_side`` says.
        pad_to: Pad every batch to this length; ``None`` pads to the longest item.

    Returns (when called):
        A dict with ``input_ids`` and ``attention_mask`` (``batch x length`` long
        tensors) and, for labelled items, ``labels``.
    """

    def __init__(self, pad_token_id: int, padding_side: str = "right", pad_to: int | None = None):
        check_one_of(padding_side, ("right", "left"), "padding side")
        self.pad_token_id = pad_token_id
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
        batch = {"input_ids": self._pad([item["input_ids"] for item in items], self.pad_token_id),
                 "attention_mask": self._pad([item["attention_mask"] for item in items], 0)}
        if "labels" in items[0]:
            batch["labels"] = torch.stack([item["labels"] for item in items])
        return batch
