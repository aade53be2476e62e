"""YOLOv3-tiny: the Darknet weights reader, damaged files refused, real detections, OpenCV's reader agrees."""

import shutil
import struct
import warnings

import numpy as np
import pytest
import torch

from tlutils.core.assets import resolve
from tlutils.core.catalog import SHA_YOLOV3_TINY_WEIGHTS
from tlutils.core.convert import (
    DarknetWeightsError,
    convert_yolov3_tiny_darknet,
    load_darknet_weights,
    read_class_names,
    read_darknet_weights,
)
from tlutils.core.io import sha256_of
from tlutils.core.sources import AssetDamagedError, AssetNotFoundError, AssetWarning
from tlutils.core.yolo import YOLOv3Tiny, detect, letterbox

N_FLOATS = 8_858_734  # yolov3-tiny: every weight, bias and BatchNorm statistic of the 13 convolutions


def resolved_path(name, build=True):
    """The asset's folder; skip only when its source is not installable here (a damaged one fails)."""
    try:
        return resolve(name, build=build).path
    except AssetDamagedError:
        raise
    except AssetNotFoundError as error:
        pytest.skip(f"{name}: its source is not installed here: {str(error).splitlines()[-1]}")


@pytest.fixture(scope="module")
def darknet_weights():
    return resolved_path("yolov3_tiny_darknet") / "yolov3-tiny.weights"


@pytest.fixture(scope="module")
def coco_model(darknet_weights, tmp_path_factory):
    """The converted model, built in a throw-away folder by the same conversion ``prepare`` runs."""
    out = tmp_path_factory.mktemp("yolov3_tiny")
    convert_yolov3_tiny_darknet(darknet_weights.parent, out)
    model = YOLOv3Tiny(class_names=read_class_names(out / "coco.names"))
    model.load_state_dict(torch.load(out / "yolov3_tiny.pt", weights_only=True))
    return model.eval()


def darknet_file(path, floats, version=(0, 2, 0), seen=1234):
    """Write a Darknet weights file: header, then float32 values."""
    wide = version[0] * 10 + version[1] >= 2
    header = struct.pack("<3iq" if wide else "<4i", *version, seen)
    path.write_bytes(header + np.asarray(floats, dtype="<f4").tobytes())
    return path


def needed_floats(model):
    return sum(t.numel() for conv, norm in model.darknet_layers()
               for t in ([norm.bias, norm.weight, norm.running_mean, norm.running_var] if norm is not None
                         else [conv.bias]) + [conv.weight])


# ---------------------------------------------------------------- the reader
def test_synthetic_file_lands_in_darknet_order(tmp_path):
    model = YOLOv3Tiny()
    n = needed_floats(model)
    floats = np.arange(n, dtype=np.float64) % 1000 + 1.0  # positive, so BatchNorm variances are valid
    info = load_darknet_weights(model, darknet_file(tmp_path / "w.weights", floats))
    assert info == {"version": [0, 2, 0], "seen": 1234, "floats": n}
    first_conv, first_norm = model.darknet_layers()[0]
    # layer 0: 16 BatchNorm biases, 16 weights, 16 means, 16 variances, then the 16 x 3 x 3 x 3 kernel
    assert first_norm.bias.tolist() == floats[:16].tolist()
    assert first_norm.running_var.tolist() == floats[48:64].tolist()
    assert first_conv.weight.flatten().tolist() == floats[64:64 + 432].tolist()
    last_conv, last_norm = model.darknet_layers()[-1]
    assert last_norm is None and last_conv.weight.flatten()[-1].item() == floats[-1]


def test_the_conversion_uses_every_float_of_the_real_file(darknet_weights):
    raw = read_darknet_weights(darknet_weights)
    assert raw.version == (0, 2, 0) and raw.seen == 32_013_312
    assert raw.floats.size == N_FLOATS == (darknet_weights.stat().st_size - 20) // 4
    model = YOLOv3Tiny()
    assert load_darknet_weights(model, darknet_weights)["floats"] == N_FLOATS == needed_floats(model)
    stored = sum(t.numel() for name, t in model.state_dict().items() if not name.endswith("num_batches_tracked"))
    assert stored == N_FLOATS  # and the module holds nothing that the file did not set


def test_the_converted_cache_records_every_float(darknet_weights, tmp_path):
    import json

    convert_yolov3_tiny_darknet(darknet_weights.parent, tmp_path)
    record = json.loads((tmp_path / "conversion.json").read_text())
    assert record["floats"] == N_FLOATS and record["source_sha256"] == SHA_YOLOV3_TINY_WEIGHTS
    names = read_class_names(tmp_path / "coco.names")
    assert len(names) == 80 and names[:3] == ["person", "bicycle", "car"] and names[-1] == "toothbrush"


# ---------------------------------------------------------------- damaged files are refused
@pytest.fixture
def copy_of_weights(darknet_weights, tmp_path):
    folder = tmp_path / "darknet"
    folder.mkdir()
    shutil.copy(darknet_weights, folder / "yolov3-tiny.weights")
    shutil.copy(darknet_weights.parent / "coco.names", folder / "coco.names")
    return folder / "yolov3-tiny.weights"


def test_a_truncated_file_is_refused(copy_of_weights):
    data = copy_of_weights.read_bytes()
    copy_of_weights.write_bytes(data[:len(data) // 2 // 4 * 4])
    truncated = r"holds [\d,]+ floats but YOLOv3Tiny needs 8,858,734: the file is truncated"
    with pytest.raises(DarknetWeightsError, match=truncated):
        load_darknet_weights(YOLOv3Tiny(), copy_of_weights)


def test_a_file_cut_mid_float_is_refused(copy_of_weights):
    copy_of_weights.write_bytes(copy_of_weights.read_bytes()[:-3])
    with pytest.raises(DarknetWeightsError, match="not whole float32 values"):
        read_darknet_weights(copy_of_weights)


def test_a_file_with_extra_floats_or_a_bad_header_is_refused(tmp_path):
    model = YOLOv3Tiny()
    with pytest.raises(DarknetWeightsError, match="longer than this network"):
        load_darknet_weights(model, darknet_file(tmp_path / "long.weights", np.ones(needed_floats(model) + 1)))
    (tmp_path / "html.weights").write_bytes(b"<html><body>403 Forbidden</body></html>")
    with pytest.raises(DarknetWeightsError, match="not a Darknet weights file"):
        read_darknet_weights(tmp_path / "html.weights")
    (tmp_path / "tiny.weights").write_bytes(b"\0" * 8)
    with pytest.raises(DarknetWeightsError, match="too few for a Darknet weights header"):
        read_darknet_weights(tmp_path / "tiny.weights")


def test_a_file_with_nan_is_refused(tmp_path):
    model = YOLOv3Tiny()
    floats = np.ones(needed_floats(model))
    floats[100] = np.nan
    with pytest.raises(DarknetWeightsError, match="NaN"):
        load_darknet_weights(model, darknet_file(tmp_path / "nan.weights", floats))


def test_a_bit_flipped_file_of_the_right_size_is_refused_by_its_hash(copy_of_weights, tmp_path):
    data = bytearray(copy_of_weights.read_bytes())
    data[1_000_000] ^= 0x40
    copy_of_weights.write_bytes(bytes(data))
    with pytest.raises(DarknetWeightsError, match="not the official yolov3-tiny release"):
        convert_yolov3_tiny_darknet(copy_of_weights.parent, tmp_path)


def test_a_damaged_mirror_copy_is_skipped_for_the_package(copy_of_weights, monkeypatch):
    """The resolver checks the sha256 before anything reads the file."""
    mirror = copy_of_weights.parent.parent / "mirror"
    shutil.copytree(copy_of_weights.parent, mirror / "yolov3_tiny_darknet")
    (mirror / "yolov3_tiny_darknet" / "yolov3-tiny.weights").write_bytes(copy_of_weights.read_bytes()[:-4096])
    monkeypatch.setenv("TLLAB_MIRROR", str(mirror))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = resolve("yolov3_tiny_darknet", sources=("mirror", "package"))
    assert found.source == "package" and sha256_of(found.path / "yolov3-tiny.weights") == SHA_YOLOV3_TINY_WEIGHTS
    assert any(issubclass(w.category, AssetWarning) and "damaged" in str(w.message) for w in caught)


def test_the_online_fetch_checks_the_hash_and_falls_back_to_the_github_release(tmp_path, monkeypatch):
    """No network: a stand-in download; Darknet's site refuses, the release serves the wrong bytes."""
    from tlutils.core import catalog

    asked = []

    def fake_download(url, dest, sha256=None, progress=True):
        asked.append(url)
        if "pjreddie.com" in url:
            raise OSError("HTTP Error 403: Forbidden")
        dest.write_bytes(b"<html>not the weights</html>")
        if sha256 is not None and sha256_of(dest) != sha256:
            dest.unlink()
            raise ValueError(f"{url}: sha256 mismatch (expected {sha256}); the download was discarded")
        return dest

    monkeypatch.setattr(catalog, "download", fake_download)
    with pytest.raises(ValueError, match="sha256 mismatch"):
        catalog._yolov3_tiny_fetch(tmp_path)
    assert asked == [catalog.YOLOV3_TINY_URL, catalog.YOLOV3_TINY_GITHUB] and not any(tmp_path.iterdir())


# ---------------------------------------------------------------- detections on real photos
@pytest.fixture(scope="module")
def photo():
    from PIL import Image

    folder = resolved_path("darknet_photos", build=False)
    return lambda name: np.asarray(Image.open(folder / f"{name}.jpg").convert("RGB"))


def test_letterbox_keeps_the_proportions_and_pads_grey():
    image = np.full((300, 600, 3), 255, dtype=np.uint8)
    inputs, placement = letterbox(image)
    assert inputs.shape == (3, 416, 416) and (placement.dx, placement.dy) == (0, 104)
    assert inputs[:, :104].eq(0.5).all() and inputs[:, 312:].eq(0.5).all()  # grey bars above and below
    assert torch.allclose(inputs[:, 104:312], torch.ones(1))
    back = placement.to_image(torch.tensor([[0.0, 104.0, 416.0, 312.0]]))
    assert torch.allclose(back, torch.tensor([[0.0, 0.0, 600.0, 300.0]]))


def test_dog_jpg_shows_a_dog_a_bicycle_and_a_car(coco_model, photo):
    image = photo("dog")
    found = detect(coco_model, image)
    top = found["names"][:5]
    assert {"dog", "bicycle", "car"} <= set(top), list(zip(found["names"], found["scores"]))
    assert list(found["scores"]) == sorted(found["scores"], reverse=True) and found["scores"][0] > 0.5
    height, width = image.shape[:2]
    boxes = dict(zip(reversed(found["names"]), reversed(found["boxes"])))  # the best box of each class
    dog, car = boxes["dog"], boxes["car"]
    assert (dog[0] + dog[2]) / 2 < width / 2 and (dog[1] + dog[3]) / 2 > height / 2  # lower left, on the porch
    assert (car[0] + car[2]) / 2 > width / 2 and (car[1] + car[3]) / 2 < height / 2  # upper right, in the street
    assert ((found["boxes"] >= 0) & (found["boxes"] <= [width, height, width, height])).all()


def test_person_jpg_shows_a_person_dogs_and_a_horse(coco_model, photo):
    found = detect(coco_model, photo("person"), score_threshold=0.5)
    assert sorted(found["names"]) == ["dog", "dog", "horse", "person"]


# ---------------------------------------------------------------- the original runtime agrees
def test_outputs_match_opencvs_darknet_reader(coco_model, darknet_weights, photo):
    cv2 = pytest.importorskip("cv2", reason="OpenCV is not installed (pip install 'opencv-python-headless<4.13')")
    if not hasattr(cv2.dnn, "readNetFromDarknet"):
        pytest.skip(f"OpenCV {cv2.__version__} has no Darknet reader (OpenCV 5 dropped it)")
    cfg = darknet_weights.parent / "yolov3-tiny.cfg"
    if not cfg.is_file():
        pytest.skip(f"no yolov3-tiny.cfg next to {darknet_weights} (only the pip package ships it)")
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(darknet_weights))
    for name in ("dog", "person"):
        inputs, _ = letterbox(photo(name))
        net.setInput(np.ascontiguousarray(inputs[None].numpy()))
        theirs = np.concatenate(net.forward(net.getUnconnectedOutLayersNames()), 0)
        with torch.no_grad():
            ours = coco_model(inputs[None])[0].numpy()
        # OpenCV orders the rows (row, column, anchor), ours (anchor, row, column); its boxes are relative
        ours = np.concatenate([ours[:507].reshape(3, 13, 13, 85).transpose(1, 2, 0, 3).reshape(-1, 85),
                               ours[507:].reshape(3, 26, 26, 85).transpose(1, 2, 0, 3).reshape(-1, 85)])
        ours[:, :4] /= 416
        ours[:, 5:] *= ours[:, 4:5]
        assert theirs.shape == ours.shape == (2535, 85)
        assert np.abs(ours[:, :5] - theirs[:, :5]).max() < 1e-3
        shown = theirs[:, 5:] > 0  # OpenCV zeroes class scores of 0.2 and under
        assert shown.any() and np.abs(ours[:, 5:][shown] - theirs[:, 5:][shown]).max() < 1e-3


# --- fine-tuning: one-class head, target assignment, the YOLOv3 loss -----------------------

from tlutils.core.yolo import ANCHORS, adapt_to_classes, assign_targets, yolo_loss, yolo_step  # noqa: E402


def test_adapt_to_one_class_keeps_box_and_objectness_rows():
    torch.manual_seed(0)
    model = YOLOv3Tiny(num_classes=80)
    before = model.head_small[-1].weight.detach().clone()
    adapt_to_classes(model, ["tree"])
    after = model.head_small[-1].weight
    assert after.shape[0] == 3 * 6 and model.class_names == ["tree"]
    for a in range(3):
        assert torch.equal(after[a * 6:a * 6 + 5], before[a * 85:a * 85 + 5])
        assert torch.count_nonzero(after[a * 6 + 5]) == 0


def test_assign_targets_puts_a_hand_built_box_in_its_cell_and_anchor():
    # a 23 x 27 box (exactly anchor 1, the small head's second) centred at (100, 60) on a 256 x 256 input
    box = np.array([[100 - 11.5, 60 - 13.5, 100 + 11.5, 60 + 13.5]])
    large, small = assign_targets([np.zeros((0, 4)), box], [(8, 8), (16, 16)], (256, 256))
    assert len(large["image"]) == 0 and len(small["image"]) == 1
    assert (small["image"].item(), small["anchor"].item()) == (1, 1)
    assert (small["row"].item(), small["col"].item()) == (60 // 16, 100 // 16)
    assert torch.allclose(small["txy"][0], torch.tensor([100 / 16 - 6, 60 / 16 - 3]))
    assert torch.allclose(small["twh"][0], torch.zeros(2), atol=1e-6)
    # a big box goes to the coarse head, anchor (135, 169) is index 1 there
    big = np.array([[10.0, 10.0, 145.0, 179.0]])
    large, small = assign_targets([big], [(8, 8), (16, 16)], (256, 256))
    assert len(small["image"]) == 0 and large["anchor"].item() == ANCHORS.index((135, 169)) - 3


def test_yolo_loss_is_finite_and_falls_on_one_batch():
    torch.manual_seed(0)
    model = adapt_to_classes(YOLOv3Tiny(num_classes=80), ["tree"])
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    batch = [(images[0], np.array([[5.0, 5.0, 30.0, 28.0]])), (images[1], np.array([[20.0, 30.0, 50.0, 60.0]]))]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss = yolo_step(model.train(), batch, torch.device("cpu"))
        assert torch.isfinite(loss.total) and set(loss.parts) == {"box", "objectness", "class"}
        optimizer.zero_grad()
        loss.total.backward()
        optimizer.step()
        losses.append(loss.total.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_yolo_loss_refuses_bad_boxes():
    model = adapt_to_classes(YOLOv3Tiny(num_classes=80), ["tree"])
    raw = model.raw_outputs(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="K x 4"):
        yolo_loss(raw, [np.zeros((2, 3))], (64, 64))
    with pytest.raises(ValueError, match="x0 < x1"):
        yolo_loss(raw, [np.array([[10.0, 10.0, 5.0, 20.0]])], (64, 64))
    with pytest.raises(ValueError, match="box arrays"):
        yolo_loss(raw, [np.zeros((0, 4))] * 2, (64, 64))
