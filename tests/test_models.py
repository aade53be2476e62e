"""Model loaders give real pre-trained networks (checked on real photos and sentences)."""

import numpy as np
import pytest
import torch

from tlutils.core.models import (
    imagenet_categories,
    load_efficientnet_lite0,
    load_mobilenet_v2,
    load_pretrained,
    load_text_encoder,
    load_torchvision_classic,
)
from tlutils.core.sources import AssetNotFoundError


def _photo(size: int, mean, std) -> torch.Tensor:
    """The scikit-learn 'china' sample photo (a pagoda), centre-cropped and normalised."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    image = Image.fromarray(load_sample_image("china.jpg")).resize((size * 4 // 3, size))
    left = (image.width - size) // 2
    array = np.asarray(image.crop((left, 0, left + size, size)), dtype=np.float32) / 255
    x = torch.from_numpy(array).permute(2, 0, 1)
    return ((x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])[None]


PAGODA_WORDS = ("palace", "monastery", "pagoda", "stupa", "church", "mosque", "temple", "castle", "dome", "boathouse")


@torch.no_grad()
def test_mobilenet_recognises_a_real_photo():
    top5 = load_mobilenet_v2()(_photo(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))[0].topk(5).indices
    names = [imagenet_categories()[i] for i in top5]
    assert any(word in name.lower() for name in names for word in PAGODA_WORDS), names


@torch.no_grad()
def test_efficientnet_lite_recognises_a_real_photo():
    top5 = load_efficientnet_lite0()(_photo(224, (0.5,) * 3, (0.5,) * 3))[0].topk(5).indices
    names = [imagenet_categories()[i] for i in top5]
    assert any(word in name.lower() for name in names for word in PAGODA_WORDS), names


def test_random_architecture_differs_from_pretrained():
    pretrained, random = load_mobilenet_v2(), load_mobilenet_v2(pretrained=False)
    assert not torch.equal(pretrained.features[0][0].weight, random.features[0][0].weight)


@torch.no_grad()
def test_minilm_similarities_make_sense():
    tokenizer, model = load_text_encoder("minilm_l6")
    batch = tokenizer(["A man is playing a guitar.", "Someone plays an instrument.", "Stocks fell sharply today."],
                      padding=True, return_tensors="pt")
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None]
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2


def test_classic_architectures_build_offline_and_weights_fail_clearly():
    assert sum(p.numel() for p in load_torchvision_classic("resnet18", pretrained=False).parameters()) == 11_689_512
    with pytest.raises(AssetNotFoundError, match="(?s)resnet18.*connect to the internet"):
        load_torchvision_classic("resnet18")
    with pytest.raises(ValueError, match="unknown torchvision model"):
        load_torchvision_classic("resnet19")
    with pytest.raises(ValueError, match="no model loader"):
        load_pretrained("mobilenet_v3")


def test_a_text_encoder_loads_with_the_same_fingerprint_whatever_the_random_state():
    # the converted MiniLM-L3 has no pooler weights: they must not depend on the global random state,
    # or every feature cache keyed on the model's fingerprint would miss in the next run
    import torch

    from tlutils.core.features import model_fingerprint
    from tlutils.core.models import load_text_encoder

    fingerprints = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        fingerprints.append(model_fingerprint(load_text_encoder("minilm_l3")[1]))
    assert fingerprints[0] == fingerprints[1]
