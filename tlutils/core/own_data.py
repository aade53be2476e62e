"""Your own data: a folder of images per class, a CSV of texts and labels, a folder of audio clips.

Each loader returns the same types as the course's loaders (:class:`~tlutils.core.data.ImageData`,
:class:`~tlutils.core.data.TextData`, a table of audio files like
:func:`~tlutils.core.data.load_fsdd`), so the rest of a notebook (splits, transforms,
features, the comparison protocol) runs unchanged on it. The usual mistakes raise a
:class:`~tlutils.core.data.DataFormatError` that names the file or folder and the fix.

Example:
    >>> images, labels, class_names = load_image_folder("my_photos", size=224)
    >>> texts, labels, class_names = load_text_csv("reviews.csv", text_column="review", label_column="stars")
    >>> clips = load_audio_folder("my_clips")             # labels from the sub-folder names
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from tlutils.core.data import DataFormatError, ImageData, TextData

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


def _existing_folder(root: str | Path, what: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{what} folder {root} does not exist (or is a file); pass the folder that holds "
                                "one sub-folder per class")
    return root


def _class_folders(root: Path, extensions: Sequence[str], what: str) -> dict[str, list[Path]]:
    """Class name -> its files, for every visible sub-folder; errors for no classes or an empty class."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataFormatError(f"{root} has no sub-folders: put the {what} of each class in its own sub-folder, "
                              f"e.g. {root}/cats/1.jpg and {root}/dogs/2.jpg")
    classes = {}
    for folder in folders:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                       and p.suffix.lower() in extensions)
        if not files:
            raise DataFormatError(f"class folder {folder} holds no {what} ({', '.join(extensions)}); add some or "
                                  "remove the folder")
        classes[folder.name] = files
    if len(classes) < 2:
        raise DataFormatError(f"{root} has one class ({next(iter(classes))}); a classifier needs at least two "
                              "sub-folders")
    return classes


def load_image_folder(root: str | Path, size: int | None = None) -> ImageData:
    """Images in one sub-folder per class (the layout of torchvision's ``ImageFolder``).

    Args:
        root: The folder; each visible sub-folder is a class (sorted by name), and every image
            file below it (any depth) is one example. Hidden files and other files are skipped.
        size: Resize every image to ``size x size`` (so they stack into one array); ``None``
            keeps the sizes and returns an object array of images.

    Returns:
        ``ImageData(images, labels, class_names)`` with RGB ``uint8`` images.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        DataFormatError: No class folders, one class only, an empty class, or a file that is not
            a readable image (the message names it).
    """
    from PIL import Image, UnidentifiedImageError

    classes = _class_folders(_existing_folder(root, "image"), IMAGE_EXTENSIONS, "images")
    images, labels = [], []
    for label, (name, files) in enumerate(classes.items()):
        for path in files:
            try:
                with Image.open(path) as opened:
                    image = opened.convert("RGB")
            except (UnidentifiedImageError, OSError) as error:
                raise DataFormatError(f"{path} is not a readable image ({error}); delete or replace it") from None
            if size is not None:
                image = image.resize((size, size), Image.BILINEAR)
            images.append(np.asarray(image, dtype=np.uint8))
            labels.append(label)
    if size is not None:
        stacked = np.stack(images)
    else:
        stacked = np.empty(len(images), dtype=object)
        stacked[:] = images
    return ImageData(stacked, np.asarray(labels, dtype=np.int64), list(classes))


def load_text_csv(path: str | Path, text_column: str = "text", label_column: str = "label") -> TextData:
    """Texts and labels from a CSV file (one row per text).

    Labels may be words ("positive") or integers; the class names are the sorted distinct values.

    Args:
        path: The CSV file (UTF-8, with a header row).
        text_column: The column holding the texts.
        label_column: The column holding the labels.

    Returns:
        ``TextData(texts, labels, class_names)``.

    Raises:
        FileNotFoundError: No such file.
        DataFormatError: A column is missing (the message lists the columns there are), a text or
            a label is empty, or there is only one class.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV file {path} does not exist")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (UnicodeDecodeError, pd.errors.ParserError) as error:
        raise DataFormatError(f"{path} is not a UTF-8 CSV file with a header row ({error})") from None
    for role, column in (("text", text_column), ("label", label_column)):
        if column not in table.columns:
            raise DataFormatError(f"{path} has no column {column!r} for the {role}s; its columns are "
                                  f"{list(table.columns)}; pass {role}_column=...")
    for role, column in (("text", text_column), ("label", label_column)):
        empty = table.index[table[column].str.strip() == ""].tolist()
        if empty:
            raise DataFormatError(f"{path}: empty {role} in data row(s) {[i + 1 for i in empty[:10]]} "
                                  f"(column {column!r}); fill them in or drop those rows")
    values = table[label_column].str.strip()
    names = sorted(values.unique(), key=lambda v: (not v.lstrip("-").isdigit(), int(v) if v.lstrip("-").isdigit()
                                                   else 0, v))
    if len(names) < 2:
        raise DataFormatError(f"{path}: every row has the label {names[0]!r}; a classifier needs two classes or more")
    index = {name: i for i, name in enumerate(names)}
    return TextData(table[text_column].tolist(), values.map(index).to_numpy(dtype=np.int64), names)


def load_audio_folder(root: str | Path, pattern: str | None = None, labels_csv: str | Path | None = None,
                      file_column: str = "file", label_column: str = "label") -> "pandas.DataFrame":
    """Audio clips with labels from their sub-folder, their file name, or a CSV.

    Args:
        root: The folder of clips.
        pattern: A regular expression with a group ``label`` matched against each file name,
            e.g. ``r"(?P<label>\\d)_.*\\.wav"`` for ``7_jackson_3.wav``. Files that do not match
            are an error (rename or remove them).
        labels_csv: A CSV with one row per clip: ``file_column`` (the path relative to ``root``)
            and ``label_column``.
        file_column, label_column: Columns of ``labels_csv``.

    Without ``pattern`` or ``labels_csv`` each sub-folder of ``root`` is a class.

    Returns:
        A pandas DataFrame with ``path``, ``label`` (integer), ``label_name``, sorted by path;
        read a clip with :func:`~tlutils.core.data.load_audio`.

    Raises:
        FileNotFoundError: ``root`` or ``labels_csv`` does not exist, or a listed file is missing.
        DataFormatError: No clips, an empty class, a file the pattern does not match, a file that
            is not readable audio, or a CSV without the named columns.
    """
    import pandas as pd
    import soundfile

    root = _existing_folder(root, "audio")
    if pattern is not None and labels_csv is not None:
        raise ValueError("give pattern= or labels_csv=, not both")
    if labels_csv is not None:
        rows = _labels_from_csv(root, Path(labels_csv), file_column, label_column)
    elif pattern is not None:
        rows = _labels_from_names(root, re.compile(pattern))
    else:
        rows = [(path, name) for name, files in _class_folders(root, AUDIO_EXTENSIONS, "audio clips").items()
                for path in files]
    for path, _ in rows:
        try:
            soundfile.info(str(path))
        except (RuntimeError, soundfile.LibsndfileError) as error:
            raise DataFormatError(f"{path} is not a readable audio file ({error}); delete or convert it") from None
    table = pd.DataFrame(rows, columns=["path", "label_name"]).sort_values("path", ignore_index=True)
    names = sorted(table["label_name"].unique())
    if len(names) < 2:
        raise DataFormatError(f"every clip in {root} has the label {names[0]!r}; a classifier needs two classes")
    table["label"] = table["label_name"].map({name: i for i, name in enumerate(names)})
    table["path"] = table["path"].map(str)
    return table[["path", "label", "label_name"]]


def _labels_from_names(root: Path, pattern: re.Pattern) -> list[tuple[Path, str]]:
    if "label" not in pattern.groupindex:
        raise ValueError(f"pattern {pattern.pattern!r} needs a named group (?P<label>...)")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise DataFormatError(f"{root} holds no audio clips ({', '.join(AUDIO_EXTENSIONS)})")
    rows = []
    for path in files:
        match = pattern.fullmatch(path.name)
        if match is None:
            raise DataFormatError(f"file name {path.name!r} does not match the pattern {pattern.pattern!r}; "
                                  "rename or remove the file, or fix the pattern")
        rows.append((path, match.group("label")))
    return rows


def _labels_from_csv(root: Path, csv: Path, file_column: str, label_column: str) -> list[tuple[Path, str]]:
    import pandas as pd

    if not csv.is_file():
        raise FileNotFoundError(f"labels CSV {csv} does not exist")
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    for column in (file_column, label_column):
        if column not in table.columns:
            raise DataFormatError(f"{csv} has no column {column!r}; its columns are {list(table.columns)}")
    rows = []
    for file, label in zip(table[file_column], table[label_column]):
        path = root / file
        if not path.is_file():
            raise FileNotFoundError(f"{csv} lists {file!r}, which is not in {root}")
        rows.append((path, label.strip()))
    if not rows:
        raise DataFormatError(f"{csv} lists no clips")
    return rows
