"""Loaders for every data set of the course: arrays and tables, with their class names.

Images (Fashion-MNIST, MNIST, UCI digits, photos, BreastMNIST, aerial tree tiles),
texts (Rotten Tomatoes, tweets, BBC News) and audio (the Free Spoken Digit Dataset,
Tux Paint's recorded words, clips read from files). Every loader resolves its files
through :func:`tlutils.core.assets.resolve` and checks what it reads; a file in the
wrong format raises :class:`DataFormatError` with what was expected.
"""

from __future__ import annotations

import gzip
import html
import io
import pickle
import re
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch

from tlutils.core.assets import resolve
from tlutils.core.runtime import check_one_of

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


#: The photos of Darknet's demo folder, in the order Darknet's README shows them.
DARKNET_PHOTOS = ("dog", "person", "horses", "eagle", "giraffe", "kite")


def load_darknet_photos(names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Load Darknet's demo photos: everyday scenes with COCO objects (dogs, people, horses, cars...).

    Args:
        names: Photos to load, for example ``["dog", "person"]``; ``None`` loads all of
            :data:`DARKNET_PHOTOS`.

    Returns:
        A dict from photo name to its ``H x W x 3`` ``uint8`` RGB image.

    Raises:
        ValueError: A name is not one of :data:`DARKNET_PHOTOS`.
    """
    from PIL import Image

    wanted = list(DARKNET_PHOTOS) if names is None else list(names)
    unknown = [name for name in wanted if name not in DARKNET_PHOTOS]
    if unknown:
        raise ValueError(f"unknown Darknet photo(s) {unknown}; available: {', '.join(DARKNET_PHOTOS)}")
    folder = resolve("darknet_photos").path
    return {name: np.asarray(Image.open(folder / f"{name}.jpg").convert("RGB")) for name in wanted}


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


SAMPLE_RATE = 16_000


def fixed_length(wave: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Crop a 1-D waveform to ``num_samples``, or pad it on the right with silence."""
    if wave.ndim != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {tuple(wave.shape)}")
    if len(wave) >= num_samples:
        return wave[:num_samples]
    return torch.nn.functional.pad(wave, (0, num_samples - len(wave)))


def trim_silence(wave: torch.Tensor, sample_rate: int, threshold_db: float = -35.0,
                 frame_ms: float = 10.0) -> torch.Tensor:
    """Cut leading and trailing frames quieter than ``threshold_db`` below the loudest frame.

    Args:
        wave: 1-D waveform.
        sample_rate: Its rate in Hz.
        threshold_db: Frames whose RMS is this far below the loudest frame count as silence.
        frame_ms: Frame length for the RMS.

    Returns:
        The trimmed waveform (unchanged when it is all silence).
    """
    frame = max(1, int(sample_rate * frame_ms / 1000))
    usable = len(wave) // frame * frame
    if usable == 0:
        return wave
    rms = wave[:usable].reshape(-1, frame).pow(2).mean(dim=1).sqrt()
    loud = torch.nonzero(20 * torch.log10(rms / rms.max().clamp_min(1e-12) + 1e-12) > threshold_db).flatten()
    if len(loud) == 0:
        return wave
    return wave[int(loud[0]) * frame:(int(loud[-1]) + 1) * frame]


def load_clips(paths: Sequence[str | Path], seconds: float = 1.0, sample_rate: int = SAMPLE_RATE,
               trim: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Read sound files as equal-length mono clips at ``sample_rate``.

    Each file is cropped to ``seconds`` or padded with silence on the right, then
    all files of the same original rate are resampled in one batch (resampling
    thousands of short clips one by one is dominated by per-call overhead).

    Args:
        paths: Sound files (WAV, OGG, FLAC: anything soundfile reads).
        seconds: Clip length.
        sample_rate: Target rate in Hz (16,000 for Whisper, wav2vec 2.0 and GE2E).
        trim: Cut leading and trailing silence first (see :func:`trim_silence`).

    Returns:
        ``(waves, lengths)``: a ``N x (seconds * sample_rate)`` float tensor and the
        number of real (not padded) samples of each clip at ``sample_rate``.

    Example:
        >>> waves, lengths = load_clips(load_fsdd("test")["path"][:4], seconds=1.0)
        >>> waves.shape
        torch.Size([4, 16000])
    """
    from torchaudio.functional import resample

    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds!r}")
    if len(paths) == 0:
        raise ValueError("no paths given: there is nothing to load")
    num_samples = int(round(seconds * sample_rate))
    waves, lengths = torch.zeros(len(paths), num_samples), torch.zeros(len(paths), dtype=torch.long)
    by_rate: dict[int, list[tuple[int, torch.Tensor]]] = defaultdict(list)
    for index, path in enumerate(paths):
        wave, rate = read_mono(path)
        wave = trim_silence(wave, rate) if trim else wave
        by_rate[rate].append((index, wave))
    for rate, items in by_rate.items():
        native = int(round(seconds * rate))
        batch = torch.stack([fixed_length(wave, native) for _, wave in items])
        batch = batch if rate == sample_rate else resample(batch, rate, sample_rate)
        for row, (index, wave) in enumerate(items):
            waves[index] = fixed_length(batch[row], num_samples)
            lengths[index] = min(num_samples, int(round(len(wave) * sample_rate / rate)))
    return waves, lengths


WORDS_DESCRIPTION = re.compile(r"^(?P<stamp>.+)_desc(?:_(?P<language>[a-z]{2}))?\.ogg$")


def _stamp_texts(text_file: Path) -> dict[str, str]:
    """Written descriptions of one stamp by language (the first line is English)."""
    if not text_file.is_file():
        return {}
    lines = text_file.read_text(encoding="utf-8", errors="replace").splitlines()
    texts = {"en": lines[0].strip()} if lines else {}
    for line in lines[1:]:
        key, _, value = line.partition("=")
        language = key.split(".")[0]
        if value and len(language) == 2:
            texts.setdefault(language, value.strip())
    return texts


def load_spoken_words(languages: Sequence[str] | None = None) -> "pandas.DataFrame":
    """List Tux Paint's recorded stamp descriptions: real human speech in about a dozen languages.

    Every stamp (a picture of an animal, a food, a vehicle...) has short recordings
    of its description, one file per language: ``<stamp>_desc_<language>.ogg``, and
    ``<stamp>_desc.ogg`` for English. The written description comes from ``<stamp>.txt``.

    Args:
        languages: Two-letter codes to keep (for example ``("es", "fr")``); ``None`` keeps all.

    Returns:
        A DataFrame with columns ``path``, ``stamp``, ``category`` (the stamp's top-level
        folder), ``language`` and ``text`` (the written description, ``""`` when missing),
        sorted by path.

    Raises:
        FileNotFoundError: no recordings were found in the resolved folder.
    """
    import pandas as pd

    root = resolve("real_words").path
    rows = []
    for path in sorted(root.rglob("*_desc*.ogg")):
        match = WORDS_DESCRIPTION.match(path.name)
        language = (match["language"] or "en") if match else None
        if language is None or (languages is not None and language not in languages):
            continue
        text = _stamp_texts(path.with_name(match["stamp"] + ".txt")).get(language, "")
        rows.append(dict(path=str(path), stamp=match["stamp"], category=path.relative_to(root).parts[0],
                         language=language, text=text))
    if not rows:
        raise FileNotFoundError(f"no <stamp>_desc_<language>.ogg recordings for {languages or 'any language'} under {root}")
    return pd.DataFrame(rows)


DIGIT_NAME = re.compile(r"^(?P<digit>\d)_(?P<language>[a-z]{2})\.ogg$")


def load_digit_names(languages: Sequence[str] | None = None) -> "pandas.DataFrame":
    """List Tux Paint's recordings of the digit names 0-9 (``symbols/math/<digit>_<language>.ogg``).

    They were recorded separately from the stamp descriptions of
    :func:`load_spoken_words`, which makes them a second, independent test set
    for spoken-language identification.

    Returns:
        A DataFrame with columns ``path``, ``digit`` and ``language``, sorted by path.
    """
    import pandas as pd

    folder = resolve("real_words").path / "symbols" / "math"
    rows = [dict(path=str(path), digit=int(match["digit"]), language=match["language"])
            for path in sorted(folder.glob("*_*.ogg")) if (match := DIGIT_NAME.match(path.name))
            and (languages is None or match["language"] in languages)]
    if not rows:
        raise FileNotFoundError(f"no <digit>_<language>.ogg recordings for {languages or 'any language'} in {folder}")
    return pd.DataFrame(rows)


#: BreastMNIST's own label order (MedMNIST v2): 0 = malignant, 1 = normal or benign.
BREASTMNIST_CLASSES = ("malignant", "normal/benign")


#: The aerial tiles in the deepforest package: file stem -> NEON site.
TREE_TILES = {
    "2019_YELL_2_528000_4978000_image_crop2": "YELL",
    "2019_YELL_2_541000_4977000_image_crop": "YELL",
    "OSBS_029": "OSBS",
    "SOAP_061": "SOAP",
}


class MedicalData(NamedTuple):
    """Images and labels of a medical-style task (unpacks like :class:`tlutils.core.data.ImageData`).

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


def _breastmnist(split: str) -> MedicalData:
    """Read one split of the real BreastMNIST (64 px) npz file."""
    with np.load(resolve("breastmnist").file(".npz"), allow_pickle=False) as arrays:
        images = arrays[f"{split}_images"].astype(np.uint8)
        labels = arrays[f"{split}_labels"].reshape(-1).astype(np.int64)
    return MedicalData(images, labels, list(BREASTMNIST_CLASSES), None,
                       f"REAL breast ultrasound images (BreastMNIST, MedMNIST v2), {split} split")


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
