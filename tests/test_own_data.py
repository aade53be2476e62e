"""Loaders for a learner's own data: image folders, text CSVs, audio folders, and their clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
from PIL import Image

from tlutils.core.data import DataFormatError
from tlutils.core.own_data import load_audio_folder, load_image_folder, load_text_csv


def write_images(root, counts: dict[str, int], size=(12, 10)):
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((*size[::-1], 3), 40 * i, dtype=np.uint8)).save(root / name / f"{i}.png")


def test_image_folder_reads_one_class_per_sub_folder(tmp_path):
    write_images(tmp_path, {"cats": 2, "dogs": 3})
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")      # other files are skipped
    (tmp_path / ".hidden").mkdir()
    images, labels, names = load_image_folder(tmp_path, size=8)
    assert names == ["cats", "dogs"] and labels.tolist() == [0, 0, 1, 1, 1]
    assert images.shape == (5, 8, 8, 3) and images.dtype == np.uint8
    raw = load_image_folder(tmp_path).images
    assert raw.dtype == object and raw[0].shape == (10, 12, 3)       # sizes kept without size=


@pytest.mark.parametrize("make, message", [
    (lambda root: None, "has no sub-folders"),
    (lambda root: write_images(root, {"only": 2}), "has one class"),
    (lambda root: (write_images(root, {"a": 1}), (root / "b").mkdir()), "class folder .*b holds no images"),
    (lambda root: (write_images(root, {"a": 1, "b": 1}), (root / "b" / "bad.png").write_bytes(b"no png")),
     "bad.png is not a readable image"),
])
def test_image_folder_mistakes_say_what_to_fix(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(DataFormatError, match=message):
        load_image_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "missing")


def test_text_csv_maps_labels_to_sorted_class_names(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text('review,stars\n"good, really",5\nbad,1\nfine,3\n', encoding="utf-8")
    texts, labels, names = load_text_csv(path, text_column="review", label_column="stars")
    assert texts[0] == "good, really" and names == ["1", "3", "5"] and labels.tolist() == [2, 0, 1]


def test_text_csv_mistakes_say_what_to_fix(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\nhello,pos\n,neg\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"no column 'sentiment' for the labels; its columns are \['text', 'label'\]"):
        load_text_csv(path, label_column="sentiment")
    with pytest.raises(DataFormatError, match=r"empty text in data row\(s\) \[2\]"):
        load_text_csv(path)
    path.write_text("text,label\na,x\nb,x\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="needs two classes"):
        load_text_csv(path)


def write_clip(path, seconds=0.1):
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), np.zeros(int(8000 * seconds), dtype=np.float32), 8000)


def test_audio_folder_labels_from_folders_names_or_a_csv(tmp_path):
    for name in ("yes/a.wav", "yes/b.wav", "no/c.wav"):
        write_clip(tmp_path / "by_folder" / name)
    table = load_audio_folder(tmp_path / "by_folder")
    assert table["label_name"].tolist() == ["no", "yes", "yes"] and table["label"].tolist() == [0, 1, 1]
    for name in ("7_ann_0.wav", "3_bob_1.wav"):
        write_clip(tmp_path / "flat" / name)
    by_name = load_audio_folder(tmp_path / "flat", pattern=r"(?P<label>\d)_\w+_\d+\.wav")
    assert sorted(by_name["label_name"]) == ["3", "7"]
    (tmp_path / "labels.csv").write_text("file,label\n7_ann_0.wav,seven\n3_bob_1.wav,three\n")
    by_csv = load_audio_folder(tmp_path / "flat", labels_csv=tmp_path / "labels.csv")
    assert set(by_csv["label_name"]) == {"seven", "three"}


def test_audio_folder_mistakes_say_what_to_fix(tmp_path):
    write_clip(tmp_path / "7_ann_0.wav")
    (tmp_path / "oops.wav").write_bytes(b"not audio")
    with pytest.raises(DataFormatError, match="'oops.wav' does not match the pattern"):
        load_audio_folder(tmp_path, pattern=r"(?P<label>\d)_\w+_\d+\.wav")
    (tmp_path / "oops.wav").rename(tmp_path / "9_bad_1.wav")
    with pytest.raises(DataFormatError, match="9_bad_1.wav is not a readable audio file"):
        load_audio_folder(tmp_path, pattern=r"(?P<label>\d)_\w+_\d+\.wav")
    (tmp_path / "l.csv").write_text("name,label\n")
    with pytest.raises(DataFormatError, match="no column 'file'"):
        load_audio_folder(tmp_path, labels_csv=tmp_path / "l.csv")
    with pytest.raises(ValueError, match="named group"):
        load_audio_folder(tmp_path, pattern=r"\d_.*")
