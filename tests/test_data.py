"""Tests of tlutils.core.data and tlutils.core.datasets: real data set counts, safe parsing, subsets, splits, transforms.

Data sets come from their offline sources (mirror, pip or Debian package); a test
whose source is missing on this machine is skipped with the resolver's reason.
"""

import gzip
import io
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tlutils.core import data as core_data
from tlutils.core.assets import resolve
from tlutils.core.data import (
    IDX_FILES,
    DataFormatError,
    RestrictedUnpickler,
    _mnist_from_pickle,
    load_audio,
    load_bbc_news,
    load_digits,
    load_fashion_mnist,
    load_fsdd,
    load_mnist,
    load_photos,
    load_rotten_tomatoes,
    load_tweets_sentiment,
    read_idx,
)
from tlutils.core.datasets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LITE_MEAN,
    LITE_STD,
    ArrayImageDataset,
    TextDataset,
    balanced_subset,
    image_transform,
    text_collator,
    train_val_test_split,
)
from tlutils.core.sources import AssetNotFoundError, Resolved


def need(name):
    """Resolve an asset or skip the test, saying which source is missing."""
    try:
        return resolve(name, build=False)
    except AssetNotFoundError as error:
        pytest.skip(f"asset {name!r} has no offline source here; {str(error).splitlines()[-1]}")


def write_idx(path, array):
    """Write ``array`` (uint8) as a gzip-compressed IDX file, like the MNIST files."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def make_idx_folder(folder, n_train=6, n_test=4):
    """Create a tiny but valid folder of the four IDX files."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = IDX_FILES[split]
        write_idx(folder / images, rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / labels, np.arange(n) % 10)
    return folder


# ------------------------------------------------------------------ image data sets


def test_fashion_mnist_counts_and_shapes():
    need("fashion_mnist")
    x, y, names = load_fashion_mnist("train")
    assert x.shape == (60000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [6000] * 10 and len(names) == 10
    x_test, y_test, _ = load_fashion_mnist("test")
    assert x_test.shape == (10000, 28, 28) and np.bincount(y_test).tolist() == [1000] * 10
    assert names[y_test[0]] == "Ankle boot"


def test_loaders_return_copies_not_the_cache():
    need("fashion_mnist")
    x, y, names = load_fashion_mnist("test")
    x[:] = 0
    y[:] = 0
    names.clear()
    x2, y2, names2 = load_fashion_mnist("test")
    assert x2.max() == 255 and y2.max() == 9 and len(names2) == 10


def test_unknown_split_says_what_is_allowed():
    with pytest.raises(ValueError, match=r"'validation'.*allowed values: 'train', 'test'"):
        load_fashion_mnist("validation")
    with pytest.raises(ValueError, match="allowed values: 'train', 'val', 'test'"):
        load_mnist("dev")
    with pytest.raises(ValueError, match="allowed values: 'all', 'train', 'test'"):
        load_fsdd("val")


def test_mnist_splits_from_the_pickle():
    need("mnist")
    sizes = {split: load_mnist(split).images.shape for split in ("train", "val", "test")}
    assert sizes == {"train": (50000, 28, 28), "val": (10000, 28, 28), "test": (10000, 28, 28)}
    x, y, names = load_mnist("test")
    assert x.dtype == np.uint8 and x.max() == 255 and names == list("0123456789")
    assert np.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_mnist_from_an_idx_folder(tmp_path, monkeypatch):
    folder = make_idx_folder(tmp_path / "mnist", n_train=6, n_test=4)
    monkeypatch.setattr(core_data, "resolve", lambda name: Resolved(name, "cache", str(folder)))
    monkeypatch.setattr(core_data, "MNIST_TRAIN_SIZE", 4)  # the real files split 50k / 10k
    assert [len(load_mnist(s).labels) for s in ("train", "val", "test")] == [4, 2, 4]
    assert load_mnist("val").labels.tolist() == [4, 5]


def test_digits():
    need("digits")
    x, y, names = load_digits()
    assert x.shape == (1797, 8, 8) and x.dtype == np.uint8 and x.max() == 255
    assert len(names) == 10 and np.bincount(y).min() >= 170
    assert load_digits(as_uint8=False).images.max() == 16


def test_photos_are_rgb_uint8():
    need("photos")
    photos = load_photos()
    assert {"astronaut", "chelsea", "coffee", "china", "flower", "brick"} <= set(photos)
    for name, image in photos.items():
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8, name
    assert list(load_photos(["chelsea"])) == ["chelsea"]
    with pytest.raises(ValueError, match="unknown photo name.*available: astronaut"):
        load_photos(["lena"])


# ------------------------------------------------------------------ corrupted and hostile files


def test_read_idx_round_trip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)


@pytest.mark.parametrize("damage, message", [
    (lambda raw: b"\x12\x34" + raw[2:], "bad magic number"),
    (lambda raw: raw[:-10], "truncated"),
    (lambda raw: raw[:3], "bad magic number|truncated"),
])
def test_corrupted_idx_gives_a_clear_error(tmp_path, damage, message):
    raw = bytes([0, 0, 8, 3]) + struct.pack(">3I", 2, 28, 28) + bytes(2 * 28 * 28)
    (tmp_path / "bad.gz").write_bytes(gzip.compress(damage(raw)))
    with pytest.raises(DataFormatError, match=message):
        read_idx(tmp_path / "bad.gz")


def test_corrupted_fashion_mnist_mirror(tmp_path, monkeypatch):
    folder = make_idx_folder(tmp_path / "fashion_mnist")
    labels = folder / IDX_FILES["test"][1]
    labels.write_bytes(labels.read_bytes()[:20])  # a download cut short: broken gzip
    monkeypatch.setenv("TLLAB_MIRROR", str(tmp_path))
    assert load_fashion_mnist("train").images.shape == (6, 28, 28)
    with pytest.raises(DataFormatError, match="t10k-labels-idx1-ubyte.gz.*corrupted"):
        load_fashion_mnist("test")


class RunsShell:
    """Unpickling this would run a shell command (the classic pickle attack)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_os_system(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(RunsShell(marker), protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load (posix|os|nt).system"):
        RestrictedUnpickler(io.BytesIO(payload)).load()
    assert not marker.exists()


def test_load_mnist_refuses_a_hostile_pickle(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    (tmp_path / "mnist").mkdir()
    with gzip.open(tmp_path / "mnist" / "mnist.pkl.gz", "wb") as handle:
        pickle.dump(((np.zeros((1, 784), np.float32), RunsShell(marker)),), handle, protocol=2)
    monkeypatch.setenv("TLLAB_MIRROR", str(tmp_path))
    # Two locks: the file's sha256 does not match the catalogue, so the resolver skips it ...
    with pytest.warns(UserWarning, match="damaged or not the expected file"):
        digits = load_mnist("train")
    assert len(digits.images) > 1 and not marker.exists()
    # ... and even read directly, the restricted unpickler refuses what it holds.
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        _mnist_from_pickle(tmp_path / "mnist" / "mnist.pkl.gz")
    assert not marker.exists()


def test_restricted_unpickler_loads_numpy_arrays(tmp_path):
    arrays = ((np.ones((2, 784), np.float32) / 2, np.array([3, 4])),) * 3
    with gzip.open(tmp_path / "m.pkl.gz", "wb") as handle:
        # Protocol 4: Python 3's protocol 2 rebuilds bytes through _codecs.encode, which
        # the unpickler rightly refuses (the Python 2 file stores them as raw strings).
        pickle.dump(arrays, handle, protocol=4)
    splits = _mnist_from_pickle(tmp_path / "m.pkl.gz")
    assert splits["val"][0].shape == (2, 28, 28) and splits["val"][0].max() == 128
    assert splits["test"][1].tolist() == [3, 4]


# ------------------------------------------------------------------ text data sets


def test_rotten_tomatoes_reviews_only():
    need("rotten_tomatoes")
    texts, labels, names = load_rotten_tomatoes()
    assert names == ["rotten", "fresh"] and len(texts) == len(labels) == 12808
    assert np.bincount(labels).tolist() == [5405, 7403]
    assert all(isinstance(t, str) and t for t in texts)
    assert max(len(t) for t in texts) < 300  # snippets; the long plot summaries are gone


def test_bbc_news_topics_and_headlines():
    need("bbc_news")
    texts, labels, names, headlines = load_bbc_news()
    assert len(texts) == 2225 and names == ["business", "entertainment", "politics", "sports", "tech"]
    assert np.bincount(labels).tolist() == [510, 386, 417, 511, 401]
    assert headlines[0] == "Ad sales boost Time Warner profit"
    assert all(text.startswith(head) for text, head in zip(texts, headlines))
    assert sum("\ufffd" in text for text in texts) == 0  # the one cp1252 file decodes cleanly


def test_tweets_sentiment():
    need("tweets_sentiment")
    texts, labels, names = load_tweets_sentiment()
    assert names == ["negative", "neutral", "positive"] and len(texts) == 38158
    assert np.bincount(labels).tolist() == [16186, 15018, 6954]
    # The file has about 2,000 HTML entities; two tweets were escaped twice upstream
    # and keep one level after unescaping.
    assert sum("&amp;" in text or "&gt;" in text for text in texts) <= 2
    confident = load_tweets_sentiment(min_confidence=0.9)
    assert 0 < len(confident.texts) < len(texts)
    with pytest.raises(ValueError, match="min_confidence"):
        load_tweets_sentiment(min_confidence=90)


# ------------------------------------------------------------------ audio


def test_fsdd_table_and_upstream_split():
    need("fsdd")
    table = load_fsdd()
    assert len(table) == 3000 and table["speaker"].nunique() == 6 and table["digit"].nunique() == 10
    test = load_fsdd("test")
    assert len(test) == 300 and set(test["take"]) == {0, 1, 2, 3, 4}
    assert test.groupby(["speaker", "digit"]).size().eq(5).all()
    assert len(load_fsdd("train")) == 2700


def test_load_audio_resamples_to_float32_mono():
    need("fsdd")
    path = load_fsdd("test")["path"][0]
    native = load_audio(path, sample_rate=8000)
    wave = load_audio(path, sample_rate=16000)
    assert wave.dtype == torch.float32 and wave.ndim == 1
    assert abs(len(wave) - 2 * len(native)) <= 1 and wave.abs().max() <= 1.0
    with pytest.raises(ValueError, match="positive integer"):
        load_audio(path, sample_rate=0)


# ------------------------------------------------------------------ subsets and splits


def test_balanced_subset_counts_and_seed():
    labels = np.repeat([0, 1, 2], [50, 20, 30])
    idx = balanced_subset(labels, n_per_class=10, seed=1)
    assert np.bincount(labels[idx]).tolist() == [10, 10, 10] and len(set(idx)) == 30
    assert np.array_equal(idx, balanced_subset(labels, 10, seed=1))
    assert not np.array_equal(idx, balanced_subset(labels, 10, seed=2))
    assert len(balanced_subset(["cat", "dog", "dog", "cat"], 2, seed=0)) == 4


@pytest.mark.parametrize("labels, n, message", [
    (np.repeat([0, 1, 2], [50, 5, 30]), 10, r"fewer examples: 1 \(5\)"),
    ([0, 1, 1], 0, "positive integer"),
    ([], 1, "non-empty"),
])
def test_balanced_subset_errors(labels, n, message):
    with pytest.raises(ValueError, match=message):
        balanced_subset(labels, n, seed=0)


def test_split_is_fixed_by_seed_and_covers_everything():
    labels = np.repeat([0, 1], [80, 20])
    first = train_val_test_split(labels, 0.1, 0.2, seed=0)
    again = train_val_test_split(labels, 0.1, 0.2, seed=0)
    other = train_val_test_split(labels, 0.1, 0.2, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[2], other[2])
    assert np.array_equal(np.sort(np.concatenate(first)), np.arange(100))
    train, val, test = first
    assert (len(train), len(val), len(test)) == (70, 10, 20)
    assert np.bincount(labels[test]).tolist() == [16, 4]  # stratified: 20 % of each class


def test_split_of_a_count_and_errors():
    train, val, test = train_val_test_split(50, 0.2, 0.2, seed=3)
    assert (len(train), len(val), len(test)) == (30, 10, 10)
    with pytest.raises(ValueError, match="below 1"):
        train_val_test_split(50, 0.5, 0.5, seed=0)
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        train_val_test_split(50, -0.1, 0.2, seed=0)
    with pytest.raises(ValueError, match="empty validation set"):
        train_val_test_split(3, 0.1, 0.0, seed=0)


# ------------------------------------------------------------------ transforms and datasets


def test_image_transform_grey_and_rgb():
    transform = image_transform(96, IMAGENET_MEAN, IMAGENET_STD)
    grey = transform(np.full((28, 28), 255, np.uint8))
    assert grey.shape == (3, 96, 96) and grey.dtype == torch.float32
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(grey[:, 0, 0], expected)
    rgb = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    assert transform(rgb).shape == (3, 96, 96)
    from PIL import Image
    assert transform(Image.fromarray(rgb)).shape == (3, 96, 96)
    augmented = image_transform(64, LITE_MEAN, LITE_STD, train=True)(rgb)
    assert augmented.shape == (3, 64, 64) and augmented.min() >= -1 and augmented.max() <= 1


def test_image_transform_refuses_float_images():
    transform = image_transform(32)
    with pytest.raises(TypeError, match="uint8"):
        transform(np.zeros((28, 28), np.float32))
    with pytest.raises(ValueError, match="size"):
        image_transform(0)


def test_array_image_dataset_batches():
    images = np.zeros((10, 28, 28), np.uint8)
    dataset = ArrayImageDataset(images, np.arange(10) % 3, image_transform(32))
    x, y = next(iter(DataLoader(dataset, batch_size=4)))
    assert x.shape == (4, 3, 32, 32) and y.dtype == torch.int64 and y.tolist() == [0, 1, 2, 0]
    assert ArrayImageDataset(images)[0].shape == (28, 28)
    with pytest.raises(ValueError, match="10 images but 3 labels"):
        ArrayImageDataset(images, [0, 1, 2])


class WordTokenizer:
    """A stand-in for a Hugging Face tokenizer: one id per word, 0 pads."""

    pad_token_id = 0
    padding_side = "right"

    def __call__(self, texts, truncation, max_length):
        ids = [[1 + len(word) for word in text.split()][:max_length] for text in texts]
        return {"input_ids": ids}


def test_text_dataset_pads_per_batch():
    dataset = TextDataset(["a bb ccc", "dddd", "e f g h i j"], [0, 1, 0], WordTokenizer(), max_length=4)
    batch = dataset.collate([dataset[0], dataset[1]])
    assert batch["input_ids"].tolist() == [[2, 3, 4], [5, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [0, 1]
    assert len(dataset[2]["input_ids"]) == 4  # truncated to max_length
    fixed = TextDataset(["a"], None, WordTokenizer(), max_length=5, padding="max_length")
    assert fixed.collate([fixed[0]])["input_ids"].shape == (1, 5) and "labels" not in fixed[0]
    left = text_collator(pad_token_id=9, padding_side="left")
    assert left([dataset[1], dataset[0]])["input_ids"].tolist() == [[9, 9, 5], [2, 3, 4]]


def test_text_dataset_with_a_real_tokenizer():
    model = need("minilm_l6")
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model.path))
    dataset = TextDataset(["A fine film.", "Dull."], [1, 0], tokenizer, max_length=16)
    batch = next(iter(DataLoader(dataset, batch_size=2, collate_fn=dataset.collate)))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 6)
    assert batch["input_ids"][0, 0].item() == tokenizer.cls_token_id


def test_image_loader_shuffles_by_its_seed_only():
    from tlutils.core.datasets import image_loader

    images = np.arange(10 * 4 * 4, dtype=np.uint8).reshape(10, 4, 4)
    labels = np.arange(10) % 2

    def order(seed):
        loader = image_loader(images, labels, None, batch_size=10, shuffle=True, seed=seed)
        return next(iter(loader))[0][:, 0, 0].tolist()

    assert order(3) == order(3) and order(3) != order(4)
    fixed = image_loader(images, labels, None, batch_size=4)
    assert next(iter(fixed))[0][:, 0, 0].tolist() == [0, 16, 32, 48]   # no shuffling: the array's order
    with pytest.raises(ValueError, match="10 images but 9 labels"):
        image_loader(images, labels[:9], None)
