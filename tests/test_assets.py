"""The asset resolver: source order, clear errors, atomic cache builds."""

import pytest

from tlutils.core.assets import assets_by_name, resolve
from tlutils.core.catalog import CATALOGUE
from tlutils.core.io import atomic_dir, atomic_file, is_complete_dir
from tlutils.core.sources import Asset, AssetError, AssetNotFoundError, Cache, Mirror, Online, UnknownAssetError

OFFLINE_MODELS = [
    "mobilenet_v2",
    "efficientnet_lite0",
    "minilm_l6",
    "minilm_l3",
    "smollm2_135m",
    "whisper_tiny_en",
    "ge2e_speaker",
    "yolov3_tiny",
]
ONLINE_ONLY = [
    "resnet18",
    "resnet50",
    "vgg16",
    "inception_v3",
    "bert-base-uncased",
    "roberta-base",
    "gpt2",
    "wav2vec2-base",
]
DATASETS = ["fashion_mnist", "mnist", "digits", "photos", "rotten_tomatoes", "bbc_news", "fsdd", "darknet_photos"]


@pytest.fixture
def scratch_asset():
    """A one-asset catalogue for a throw-away asset: the packaged catalogue is never changed."""

    def make(name, *sources):
        return (Asset(name, "dataset", "a test asset", sources, fix="run the fixer"),)

    return make


def test_catalogue_has_every_required_asset():
    assets = assets_by_name()
    assert set(OFFLINE_MODELS + ONLINE_ONLY + DATASETS) <= set(assets)
    # fsdd comes from a mirror folder or a one-time download, never from a package
    assert all(assets[n].offline_capable for n in OFFLINE_MODELS + DATASETS if n != "fsdd")
    assert not any(assets[n].offline_capable for n in ONLINE_ONLY)


def test_catalogue_is_plain_data_and_names_are_unique():
    assert isinstance(CATALOGUE, tuple) and all(isinstance(asset, Asset) for asset in CATALOGUE)
    assert len({asset.name for asset in CATALOGUE}) == len(CATALOGUE)
    twice = (*scratch_catalogue("same"), *scratch_catalogue("same"))
    with pytest.raises(AssetError, match="appears twice"):
        assets_by_name(twice)


def scratch_catalogue(name):
    return (Asset(name, "dataset", "a test asset", (Cache(),), fix="run the fixer"),)


def test_a_conversion_reads_its_inputs_from_the_same_catalogue(temp_cache):
    raw = Asset("raw_thing", "raw", "input", (Cache(lambda out, inputs: (out / "raw").write_text("42")),), fix="-")
    made = Asset(
        "made_thing",
        "dataset",
        "converted",
        (
            Cache(
                lambda out, inputs: (out / "made").write_text((inputs["raw_thing"] / "raw").read_text()),
                needs=("raw_thing",),
            ),
        ),
        fix="-",
    )
    found = resolve("made_thing", catalogue=(raw, made))
    assert (found.path / "made").read_text() == "42"


def test_unknown_name_lists_known_names():
    with pytest.raises(UnknownAssetError, match="unknown asset 'resnet19'.*mobilenet_v2"):
        resolve("resnet19")


@pytest.mark.parametrize("name", ONLINE_ONLY)
def test_online_only_asset_fails_clearly_offline(name):
    with pytest.raises(AssetNotFoundError) as error:
        resolve(name)
    message = str(error.value)
    assert name in message and "offline mode" in message and "Fix: connect to the internet" in message


def test_package_weights_resolve_offline():
    found = resolve("mobilenet_v2")
    assert found.source in {"mirror", "package"} and found.path.is_file()


def test_mirror_wins_over_cache(tmp_path, monkeypatch, temp_cache, scratch_asset):
    (tmp_path / "mirror" / "thing").mkdir(parents=True)
    (tmp_path / "mirror" / "thing" / "data.bin").write_bytes(b"mirrored")  # an empty mirror folder is a miss
    monkeypatch.setenv("TLLAB_MIRROR", str(tmp_path / "mirror"))
    catalogue = scratch_asset("thing", Mirror("thing"), Cache(lambda out, inputs: (out / "x").write_text("built")))
    assert resolve("thing", catalogue=catalogue).source == "mirror"


def test_missing_everywhere_names_each_source_and_the_fix(monkeypatch, temp_cache, scratch_asset):
    monkeypatch.delenv("TLLAB_MIRROR", raising=False)
    catalogue = scratch_asset(
        "ghost", Mirror("ghost"), Cache(), Online("https://example.org/ghost.zip", fetch=lambda out: None)
    )
    with pytest.raises(AssetNotFoundError) as error:
        resolve("ghost", catalogue=catalogue)
    message = str(error.value)
    assert "TLLAB_MIRROR is not set" in message
    assert "is not built yet" in message
    assert "offline mode" in message
    assert message.endswith("Fix: run the fixer")


def test_cache_is_built_once_then_reused(temp_cache, scratch_asset):
    calls = []

    def build(out, inputs):
        calls.append(out)
        (out / "weights.bin").write_bytes(b"123")

    catalogue = scratch_asset("built", Cache(build))
    first, second = resolve("built", catalogue=catalogue), resolve("built", catalogue=catalogue)
    assert first.source == second.source == "cache"
    assert len(calls) == 1 and (first.path / "weights.bin").read_bytes() == b"123"


def test_interrupted_build_leaves_nothing_trusted_and_is_rebuilt(temp_cache, scratch_asset):
    attempts = []

    def build(out, inputs):
        attempts.append(1)
        (out / "half.bin").write_bytes(b"partial")
        if len(attempts) == 1:
            raise KeyboardInterrupt  # a learner pressing stop mid-conversion

    catalogue = scratch_asset("flaky", Cache(build))
    with pytest.raises(KeyboardInterrupt):
        resolve("flaky", catalogue=catalogue)
    assert not (temp_cache / "flaky").exists()
    assert list(temp_cache.iterdir()) == []  # no temporary leftovers either
    assert resolve("flaky", catalogue=catalogue).source == "cache" and len(attempts) == 2


def test_incomplete_cache_folder_is_rebuilt(temp_cache, scratch_asset):
    (temp_cache / "stale").mkdir(parents=True)
    (temp_cache / "stale" / "junk").write_text("from a killed run")
    catalogue = scratch_asset("stale", Cache(lambda out, inputs: (out / "good").write_text("ok")))
    found = resolve("stale", catalogue=catalogue)
    assert is_complete_dir(found.path) and (found.path / "good").exists() and not (found.path / "junk").exists()


def test_listing_does_not_build(temp_cache, scratch_asset):
    catalogue = scratch_asset("lazy", Cache(lambda out, inputs: pytest.fail("listing must not build")))
    with pytest.raises(AssetNotFoundError, match="python -m tlutils prepare"):
        resolve("lazy", build=False, catalogue=catalogue)


def test_atomic_file_keeps_old_content_on_failure(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "good" and list(tmp_path.iterdir()) == [target]


def test_atomic_dir_replaces_whole_folder(tmp_path):
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a").write_text("1")
    assert is_complete_dir(tmp_path / "out")
