"""Vision helpers: error analysis, Grad-CAM, the lesion task, detection and segmentation."""

import numpy as np
import pytest
import torch
from torch import nn

from tlutils.core.data import crop_tiles, load_tree_tiles
from tlutils.core.datasets import images_to_tensor
from tlutils.core.features import feature_loader
from tlutils.core.metrics import box_iou, detection_scores, mask_iou
from tlutils.core.models import mobilenet_v2_backbone
from tlutils.core.plots import show_detections, show_heatmaps, show_masks
from tlutils.core.runtime import set_seed
from tlutils.core.sources import AssetNotFoundError
from tlutils.core.train import fit
from tlutils.course.medical import load_medical_task, make_lesion_task
from tlutils.course.scenes import make_composite_scenes
from tlutils.topics.adaptation import recalibrate_batchnorm
from tlutils.topics.detection import build_mobilenet_faster_rcnn, predict_boxes, train_detector
from tlutils.topics.explain import confident_mistakes, grad_cam, most_confused_pairs, pointing_chance, pointing_game
from tlutils.topics.segmentation import (MobileNetV2UNet, build_mobilenet_unet, dice_bce_loss, predict_masks,
                                         train_segmenter)

CPU = torch.device("cpu")


# ------------------------------------------------------------------ error analysis


def test_most_confused_pairs_reads_off_diagonal_cells():
    matrix = np.array([[5, 3, 0], [0, 6, 1], [4, 0, 2]])
    assert most_confused_pairs(matrix, ["a", "b", "c"], k=2) == [("c", "a", 4), ("a", "b", 3)]
    assert len(most_confused_pairs(np.eye(3, dtype=int), ["a", "b", "c"])) == 0
    with pytest.raises(ValueError, match="3 x 3 matrix"):
        most_confused_pairs(np.zeros((2, 2)), ["a", "b", "c"])


def test_confident_mistakes_are_sorted_by_confidence():
    logits = torch.tensor([[4.0, 0.0], [0.0, 1.0], [0.0, 5.0], [2.0, 0.0]])
    targets = torch.tensor([1, 1, 0, 0])
    mistakes = confident_mistakes(logits, targets, k=5)
    assert [m["index"] for m in mistakes] == [2, 0]
    assert mistakes[0]["true"] == 0 and mistakes[0]["predicted"] == 1
    assert mistakes[0]["probability"] > mistakes[1]["probability"] > 0.5


# ------------------------------------------------------------------ Grad-CAM


class SpotNet(nn.Module):
    """Class 0 scores the mean brightness, class 1 its negative: evidence is where the image is bright."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(1, 1, 1)
        nn.init.ones_(self.features.weight)
        nn.init.zeros_(self.features.bias)
        self.classifier = nn.Linear(1, 2)
        with torch.no_grad():
            self.classifier.weight.copy_(torch.tensor([[1.0], [-1.0]]))
            self.classifier.bias.zero_()

    def forward(self, x):
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def test_grad_cam_points_at_the_evidence():
    images = torch.zeros(2, 1, 16, 16)
    images[0, 0, 2, 3] = 1.0
    images[1, 0, 12, 10] = 1.0
    model = SpotNet().requires_grad_(False)  # a fully frozen model still gets maps
    cams = grad_cam(model, images, model.features, class_index=0)
    assert cams.shape == (2, 16, 16)
    assert float(cams.min()) >= 0 and float(cams.max()) <= 1
    peaks = [np.unravel_index(int(cam.argmax()), cam.shape) for cam in cams]
    assert peaks == [(2, 3), (12, 10)]
    masks = np.zeros((2, 16, 16), bool)
    masks[0, 1:4, 2:5] = True
    masks[1, 0:2, 0:2] = True  # the wrong place
    assert pointing_game(cams, masks) == 0.5
    assert pointing_game(cams, masks, tolerance=20) == 1.0
    assert pointing_chance(masks) == pytest.approx((9 + 4) / 2 / 256)
    assert show_heatmaps([np.zeros((16, 16), np.uint8)] * 2, cams, ["a", "b"]).axes


def test_grad_cam_rejects_a_foreign_layer():
    with pytest.raises(ValueError, match="not called"):
        grad_cam(SpotNet(), torch.zeros(1, 1, 4, 4), nn.Conv2d(1, 1, 1))


def test_pointing_game_needs_objects():
    with pytest.raises(ValueError, match="at least one pixel"):
        pointing_game(torch.zeros(1, 4, 4), np.zeros((1, 4, 4), bool))


# ------------------------------------------------------------------ lesion task and tensors


def _fake_fundus(size: int = 400) -> np.ndarray:
    """A reddish disc on black, like a fundus photo."""
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 2 - 5) ** 2
    photo = np.zeros((size, size, 3), np.uint8)
    photo[inside] = (200, 90, 60)
    return photo


def test_lesion_task_paints_lesions_only_on_positive_patches():
    data = make_lesion_task(_fake_fundus(), 20, size=32, crop=60, split="train", seed=0)
    assert data.images.shape == (20, 32, 32, 3) and data.labels.sum() == 10
    assert data.masks[data.labels == 1].any(axis=(1, 2)).all()
    assert not data.masks[data.labels == 0].any()
    # a lesion darkens the tissue under it
    positive = np.flatnonzero(data.labels)[0]
    assert data.images[positive][data.masks[positive]].mean() < 0.9 * data.images[positive].mean()
    assert "SYNTHETIC" in data.description
    again = make_lesion_task(_fake_fundus(), 20, size=32, crop=60, split="train", seed=0)
    assert np.array_equal(again.images, data.images)


def test_lesion_task_checks_its_arguments():
    with pytest.raises(ValueError, match="split"):
        make_lesion_task(_fake_fundus(), 4, split="val")
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        make_lesion_task(np.zeros((100, 100)), 4)
    with pytest.raises(ValueError, match="unknown medical source"):
        load_medical_task("chest_xray")


def test_real_medical_set_needs_the_internet_once():
    with pytest.raises(AssetNotFoundError, match="breastmnist"):
        load_medical_task("breastmnist")


def test_breastmnist_file_is_read_like_the_synthetic_task(tmp_path, monkeypatch):
    folder = tmp_path / "breastmnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    np.savez(folder / "breastmnist_64.npz", **{
        f"{split}_images": rng.integers(0, 255, (n, 64, 64), dtype=np.uint8) for split, n in (("train", 6), ("test", 4))},
        **{f"{split}_labels": np.array([[0], [1]] * (n // 2)) for split, n in (("train", 6), ("test", 4))})
    monkeypatch.setenv("TLLAB_MIRROR", str(tmp_path))
    data = load_medical_task("breastmnist", "test")
    assert data.images.shape == (4, 64, 64) and data.labels.tolist() == [0, 1, 0, 1]
    assert data.class_names == ["malignant", "normal/benign"] and data.masks is None
    assert "REAL" in data.description


def test_images_to_tensor_normalises_and_resizes():
    grey = np.full((2, 28, 28), 255, np.uint8)
    batch = images_to_tensor(grey, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), size=32)
    assert batch.shape == (2, 3, 32, 32) and torch.allclose(batch, torch.ones_like(batch))
    with pytest.raises(ValueError, match="uint8"):
        images_to_tensor(np.zeros((2, 8, 8), np.float32))


def test_recalibrate_batchnorm_uses_the_data_statistics():
    model = nn.Sequential(nn.BatchNorm2d(1), nn.Flatten(), nn.Linear(4, 2))
    images = torch.randn(32, 1, 2, 2) * 3 + 5
    recalibrate_batchnorm(model, feature_loader(images, torch.zeros(32, dtype=torch.long), 8), CPU)
    assert float(model[0].running_mean) == pytest.approx(float(images.mean()), rel=1e-4)
    # the average of per-batch variances: close to, not exactly, the variance of all the data
    assert float(model[0].running_var) == pytest.approx(float(images.var()), rel=0.05)
    assert model[0].momentum == 0.1 and not model.training


# ------------------------------------------------------------------ detection


def test_tree_tiles_are_real_boxes_inside_the_images():
    tiles = load_tree_tiles()
    assert [t.site for t in tiles] == ["YELL", "YELL", "OSBS", "SOAP"]
    assert 900 < sum(len(t.boxes) for t in tiles) < 1000
    for tile in tiles:
        height, width = tile.image.shape[:2]
        assert (tile.boxes[:, 2] > tile.boxes[:, 0]).all() and (tile.boxes[:, 3] > tile.boxes[:, 1]).all()
        assert tile.boxes[:, 2].max() <= width and tile.boxes[:, 3].max() <= height
    with pytest.raises(ValueError, match="unknown tile"):
        load_tree_tiles(["NOPE"])


def test_crop_tiles_clips_boxes_to_each_window():
    tiles = load_tree_tiles(["OSBS_029"])
    images, boxes = crop_tiles(tiles, 200, min_visible=0.6)
    assert len(images) == 4 and all(image.shape == (200, 200, 3) for image in images)
    stacked = np.concatenate(boxes)
    assert stacked.min() >= 0 and stacked.max() <= 200
    assert 0.8 * len(tiles[0].boxes) <= len(stacked) <= 1.2 * len(tiles[0].boxes)
    overlapping, _ = crop_tiles(tiles, 200, stride=100)
    assert len(overlapping) == 9


def test_box_iou_and_average_precision():
    a = np.array([[0, 0, 10, 10]], np.float32)
    assert box_iou(a, np.array([[5, 0, 15, 10]]))[0, 0] == pytest.approx(50 / 150)
    truth = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)]
    perfect = [{"boxes": truth[0], "scores": np.array([0.9, 0.8])}]
    assert detection_scores(perfect, truth)["ap"] == pytest.approx(1.0)
    # a duplicate of the first box is a false positive; the second box is missed
    duplicate = [{"boxes": np.array([[0, 0, 10, 10], [1, 1, 10, 10]]), "scores": np.array([0.9, 0.95])}]
    scores = detection_scores(duplicate, truth)
    assert scores["recall"] == 0.5 and scores["precision"] == 0.5 and scores["ap"] == pytest.approx(0.5)
    nothing = [{"boxes": np.zeros((0, 4)), "scores": np.zeros(0)}]
    assert detection_scores(nothing, truth)["ap"] == 0.0
    with pytest.raises(ValueError, match="no true boxes"):
        detection_scores(nothing, [np.zeros((0, 4))])


def _square_scenes(n: int = 4, size: int = 64) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Bright squares on a dark background: an easy detection task."""
    rng = np.random.default_rng(0)
    images, boxes = [], []
    for _ in range(n):
        image = np.full((size, size, 3), 30, np.uint8)
        x, y = rng.integers(4, size - 24, size=2)
        image[y:y + 20, x:x + 20] = 230
        images.append(image)
        boxes.append(np.array([[x, y, x + 20, y + 20]], np.float32))
    return images, boxes


def test_faster_rcnn_trains_and_predicts():
    set_seed(0)
    model = build_mobilenet_faster_rcnn(num_classes=2, pretrained=False, blocks=7, image_size=64,
                                        anchor_sizes=(16, 32), representation=32)
    images, boxes = _square_scenes()
    history = train_detector(model, images, boxes, epochs=6, lr=1e-3, batch_size=4, device=CPU, progress=False)
    assert history.train_loss[-1] < history.train_loss[0]
    assert {"loss_classifier", "loss_objectness"} <= set(history.epochs[0])
    predictions = predict_boxes(model, images, CPU)
    assert len(predictions) == 4 and predictions[0]["boxes"].shape[1] == 4
    assert show_detections(images[:2], predictions[:2], boxes[:2]).axes
    with pytest.raises(ValueError, match="at least 2"):
        build_mobilenet_faster_rcnn(num_classes=1)
    with pytest.raises(ValueError, match="one box array per image"):
        train_detector(model, images, boxes[:2], device=CPU)


def test_detection_backbone_carries_the_imagenet_weights():
    from tlutils.core.models import load_mobilenet_v2

    backbone = mobilenet_v2_backbone(pretrained=True, blocks=14)
    assert backbone.out_channels == 96
    reference = load_mobilenet_v2().features[13].conv[0][0].weight
    assert torch.equal(backbone[13].conv[0][0].weight, reference)
    with pytest.raises(ValueError, match="blocks"):
        mobilenet_v2_backbone(pretrained=False, blocks=0)


# ------------------------------------------------------------------ segmentation


def test_composite_scenes_have_exact_masks():
    objects = np.zeros((3, 28, 28), np.uint8)
    objects[:, 6:22, 8:20] = 200
    background = np.full((100, 100, 3), 90, np.uint8)
    images, masks = make_composite_scenes(objects, [background], 5, size=32, object_size=(14, 16), seed=0)
    assert images.shape == (5, 32, 32, 3) and masks.shape == (5, 32, 32)
    assert masks.any(axis=(1, 2)).all()
    # outside the mask the background is untouched
    assert (images[masks == 0] == 90).mean() > 0.95
    again, _ = make_composite_scenes(objects, [background], 5, size=32, object_size=(14, 16), seed=0)
    assert np.array_equal(images, again)
    with pytest.raises(ValueError, match="at least 128"):
        make_composite_scenes(objects, [background], 1, size=128)


def test_unet_shapes_and_pretrained_encoder():
    from tlutils.core.models import load_mobilenet_v2

    unet = build_mobilenet_unet(num_classes=2, pretrained=True)
    assert torch.equal(unet.encoder[0][0].weight, load_mobilenet_v2().features[0][0].weight)
    with torch.no_grad():
        assert unet.eval()(torch.zeros(1, 3, 64, 96)).shape == (1, 2, 64, 96)
        with pytest.raises(ValueError, match="multiples of 32"):
            unet(torch.zeros(1, 3, 50, 64))


def test_unet_learns_a_mask():
    set_seed(0)
    images = torch.randn(4, 3, 32, 32) * 0.1
    masks = torch.zeros(4, 1, 32, 32)
    masks[:, :, 8:24, 8:24] = 1
    images[:, 0] += masks[:, 0] * 2  # the object is redder
    unet = build_mobilenet_unet(num_classes=1, pretrained=False)
    history = fit(unet, feature_loader(images, masks, 4), epochs=4, lr=3e-3, loss_fn=dice_bce_loss,
                  metrics=(), device=CPU, seed=0, progress=False)
    assert history.train_loss[-1] < history.train_loss[0]
    predicted = predict_masks(unet, images, CPU)
    assert predicted.shape == (4, 32, 32) and predicted.dtype == bool
    assert show_masks(np.zeros((2, 32, 32, 3), np.uint8), masks[:2, 0].numpy(), {"model": predicted[:2]}).axes


def test_train_segmenter_is_seeded_and_scored():
    images = torch.randn(4, 3, 32, 32) * 0.1
    masks = torch.zeros(4, 1, 32, 32)
    masks[:, :, 8:24, 8:24] = 1
    images[:, 0] += masks[:, 0] * 2
    test_masks = masks[:, 0].numpy().astype(bool)
    recipe = dict(epochs=1, lr=3e-3, batch_size=2, device=CPU)
    first, again = (train_segmenter(False, images, masks, images, test_masks, seed=3, **recipe) for _ in range(2))
    assert first["iou"] == again["iou"] == mask_iou(first["masks"], test_masks)   # the same seed, the same run
    assert first["history"].steps == 2 and first["masks"].shape == (4, 32, 32)
    with pytest.raises(ValueError, match="N x 1 x H x W"):
        train_segmenter(False, images, masks[:, 0], images, test_masks, seed=0, **recipe)


def test_mask_iou_and_loss():
    true = np.zeros((4, 4), bool)
    true[:2, :2] = True
    assert mask_iou(true, true) == 1.0
    assert mask_iou(np.ones((4, 4)), true) == 0.25
    assert mask_iou(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0
    with pytest.raises(ValueError, match="differ in shape"):
        mask_iou(true, true[:2])
    target = torch.from_numpy(true).float()[None, None]
    assert dice_bce_loss(target * 20 - 10, target) < dice_bce_loss(torch.zeros_like(target), target)


def test_unet_rejects_a_wrong_decoder_spec():
    with pytest.raises(ValueError, match="decoder_channels"):
        MobileNetV2UNet(nn.Sequential(), decoder_channels=(8, 8))
