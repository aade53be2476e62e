"""Model anatomy helpers: filters, activations, probes, projections, architecture tables, inference."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers import TinyNet
from tlutils.core.features import fit_linear_probe, probe_accuracy, standardize
from tlutils.core.metrics import separation_score
from tlutils.core.plots import plot_activation_maps, plot_projections
from tlutils.core.surgery import parameter_count
from tlutils.core.train import fit
from tlutils.topics.anatomy import (
    MultiDepthPooling,
    TruncatedClassifier,
    block_activations,
    block_features,
    channel_redundancy,
    filter_mosaic,
    filter_statistics,
    first_conv_weights,
    plot_filter_grid,
    project_2d,
    render_like_optdigits,
)
from tlutils.topics.architectures import (
    architecture_row,
    attention_map,
    build_on_meta,
    cosine_similarity_matrix,
    count_flops,
    future_token_influence,
    head_summary,
    imagenet_top_k,
    sentence_embeddings,
    weight_layer_depth,
)

CPU = torch.device("cpu")


def rgb_body() -> nn.Sequential:
    """Three small blocks on RGB input, like a CNN's ``features``."""
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
        nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU()),
        nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
    )


def blob_images(n: int = 60, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB images whose colour encodes one of three classes (learnable in a few steps)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = torch.randn(n, 3, 16, 16, generator=generator) * 0.3
    images[torch.arange(n), labels] += 1.5
    return images, labels


# ---------------------------------------------------------------- filters and activations


def test_first_conv_weights_and_statistics():
    torch.manual_seed(0)
    weights = first_conv_weights(rgb_body())
    assert weights.shape == (4, 3, 3, 3)
    smooth = torch.ones(8, 1, 3, 3) * torch.linspace(-1, 1, 3)[None, None, None, :]
    grey_edges = smooth.repeat(1, 3, 1, 1) + 0.01 * torch.randn(8, 3, 3, 3)
    learned, random = filter_statistics(grey_edges), filter_statistics(torch.randn(64, 3, 3, 3))
    assert learned["colour_coherence"] > 0.95 and abs(random["colour_coherence"]) < 0.2
    assert learned["spatial_smoothness"] > random["spatial_smoothness"] + 0.3
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        first_conv_weights(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="RGB filters"):
        filter_statistics(torch.randn(4, 1, 3, 3))


def test_filter_mosaic_and_plots_return_figures():
    weights = torch.randn(5, 3, 3, 3)
    mosaic = filter_mosaic(weights, ncols=4, upscale=2)
    assert mosaic.shape == (2 * 7 + 1, 4 * 7 + 1, 3) and 0 <= mosaic.min() and mosaic.max() <= 1
    fig = plot_filter_grid({"a": weights, "b": weights}, ncols=4)
    assert len(fig.axes) == 2


def test_block_activations_and_channel_redundancy():
    torch.manual_seed(0)
    body = rgb_body()
    maps = block_activations(body, torch.randn(3, 16, 16), [0, 2], device=CPU)
    assert sorted(maps) == [0, 2] and maps[0].shape == (4, 16, 16) and maps[2].shape == (8, 4, 4)
    same = torch.randn(1, 5, 5).repeat(4, 1, 1)
    assert channel_redundancy(same) == pytest.approx(1.0, abs=1e-5)
    assert channel_redundancy(torch.randn(16, 20, 20)) < 0.2
    fig = plot_activation_maps({"one": maps, "two": maps}, channels=2)
    assert len(fig.axes) == 2 * 4
    with pytest.raises(ValueError, match="depths"):
        block_activations(body, torch.randn(3, 16, 16), [5], device=CPU)
    with pytest.raises(ValueError, match="at least 2 channels"):
        channel_redundancy(torch.randn(1, 4, 4))


# ---------------------------------------------------------------- features, probes, projections


def test_multi_depth_pooling_widths_and_split():
    pooling = MultiDepthPooling(rgb_body(), [2, 0])
    assert pooling.depths == [0, 2] and pooling.widths == [4, 8]
    out = pooling(torch.randn(5, 3, 16, 16))
    parts = pooling.split(out)
    assert out.shape == (5, 12) and parts[0].shape == (5, 4) and parts[2].shape == (5, 8)
    with pytest.raises(ValueError, match="feature columns"):
        pooling.split(torch.zeros(5, 3))


def test_block_features_are_cached(temp_cache):
    images, labels = blob_images(12)
    loader = DataLoader(TensorDataset(images, labels), batch_size=4)
    torch.manual_seed(0)
    first, first_labels = block_features(rgb_body(), loader, [1, 2], "t01_blocks", "tiny", device=CPU, progress=False)
    assert first[1].shape == (12, 6) and first[2].shape == (12, 8) and torch.equal(first_labels, labels)
    assert (temp_cache / "features" / "t01_blocks.safetensors").is_file()
    torch.manual_seed(0)  # the same weights: the cached features come back
    again, _ = block_features(rgb_body(), loader, [1, 2], "t01_blocks", "tiny", device=CPU, progress=False)
    assert torch.equal(first[2], again[2])
    torch.manual_seed(1)  # other weights, same fingerprint text: the cache is rebuilt, not trusted
    with pytest.warns(UserWarning, match="model weights changed"):
        other, _ = block_features(rgb_body(), loader, [1, 2], "t01_blocks", "tiny", device=CPU, progress=False)
    assert not torch.equal(first[2], other[2])


def test_standardize_uses_the_reference_statistics():
    reference = np.array([[0.0, 10.0], [2.0, 30.0]])
    out = standardize(np.array([[1.0, 20.0]]), reference)
    assert np.allclose(out, [[0.0, 0.0]], atol=1e-5)
    assert np.allclose(standardize(reference).mean(axis=0), 0)
    tiny = np.array([[1e-9, 5.0], [3e-9, 5.0]])  # a tiny scale is kept, a constant column only centred
    assert np.allclose(standardize(tiny), [[-1.0, 0.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match="N x D"):
        standardize(np.zeros((3, 2)), np.zeros((3, 4)))


def test_linear_probe_separates_separable_classes():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 30)
    features = rng.normal(size=(90, 5)) + 4 * np.eye(3, 5)[labels]
    assert probe_accuracy(features[::2], labels[::2], features[1::2], labels[1::2]) > 0.9
    assert fit_linear_probe(standardize(features), labels).score(standardize(features), labels) > 0.9
    with pytest.raises(ValueError, match="two classes"):
        fit_linear_probe(features, np.zeros(90))


def test_projection_is_deterministic_and_separation_score_orders_maps():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    clustered = rng.normal(size=(60, 8)) * 0.1 + 5 * np.eye(3, 8)[labels]
    for method in ("pca", "tsne"):
        a, b = project_2d(clustered, method, seed=0), project_2d(clustered, method, seed=0)
        assert a.shape == (60, 2) and np.allclose(a, b)
    mixed = project_2d(rng.normal(size=(60, 8)), "pca")
    assert separation_score(project_2d(clustered, "pca"), labels) > separation_score(mixed, labels) + 0.3
    assert len(plot_projections({"a": mixed}, labels, ["x", "y", "z"]).axes) == 1
    with pytest.raises(ValueError, match="unknown projection"):
        project_2d(clustered, "umap")


# ---------------------------------------------------------------- one task, three set-ups


def test_truncated_classifier_trains():
    images, labels = blob_images(48)
    model = TruncatedClassifier(rgb_body()[:2], num_classes=3)
    assert model.classifier.in_features == 6
    loader = DataLoader(TensorDataset(images, labels), batch_size=8, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    history = fit(model, loader, epochs=4, lr=0.01, seed=0, device=CPU, progress=False)
    assert history.train_loss[-1] < history.train_loss[0]
    with pytest.raises(ValueError, match="num_classes"):
        TruncatedClassifier(rgb_body(), num_classes=1)


def test_render_like_optdigits_frames_the_ink():
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 12:16] = 255  # a tall thin stroke, like a "1"
    out = render_like_optdigits(digit[None])
    assert out.shape == (1, 8, 8) and out.dtype == np.uint8
    assert out[0, 0].any() and out[0, 7].any()      # the ink spans the full height
    assert not out[0, :, 0].any() and not out[0, :, 7].any()  # and stays centred
    assert out.max() == 255                          # full 4 x 4 blocks count 16 -> 255
    assert render_like_optdigits(np.zeros((1, 28, 28), np.uint8)).max() == 0
    with pytest.raises(ValueError, match="uint8"):
        render_like_optdigits(np.zeros((28, 28), np.float32))


# ---------------------------------------------------------------- architecture tables


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.shortcut = nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1)

    def forward(self, x):
        return self.b(self.a(x)) + self.shortcut(x)


def test_depth_counts_the_longest_path_of_weight_layers():
    model = nn.Sequential(nn.Conv2d(3, 2, 1), Residual(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    assert weight_layer_depth(model) == 1 + 2 + 1


def test_count_flops_on_meta_and_real_models():
    assert count_flops(nn.Sequential(nn.Flatten(), nn.Linear(3 * 2 * 2, 5)), 2) == 2 * 12 * 5
    meta = build_on_meta(lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten()))
    assert next(meta.parameters()).device.type == "meta"
    assert count_flops(meta, 8) == 2 * (3 * 3 * 3) * 4 * 8 * 8


def test_architecture_row_and_head_summary():
    model = TinyNet()
    model.features[0][0] = nn.Conv2d(3, 4, 3, padding=1)
    row = architecture_row("tiny", model, 8)
    assert row["depth (weight layers)"] == 3 and row["head"] == "classifier"
    assert row["params (M)"] * 1e6 == pytest.approx(parameter_count(model))
    summary = head_summary(model)
    assert summary["head params"] == 8 * 3 + 3 and not summary["tied"]
    assert summary["head params"] + summary["body params"] == parameter_count(model)


def test_head_summary_detects_tied_embeddings():
    class TinyLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.lm_head = nn.Linear(4, 10, bias=False)
            self.lm_head.weight = self.embed.weight

    summary = head_summary(TinyLM())
    assert summary["tied"] and summary["body params"] == 40 and summary["head params"] == 40


# ---------------------------------------------------------------- inference helpers


def test_imagenet_top_k_returns_sorted_probabilities():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 2 * 2, 6))
    table = imagenet_top_k(model, torch.randn(3, 2, 2), lambda x: x, [f"c{i}" for i in range(6)], k=3, device=CPU)
    assert list(table.columns) == ["class", "probability"] and len(table) == 3
    assert table["probability"].is_monotonic_decreasing
    with pytest.raises(ValueError, match="category names"):
        imagenet_top_k(model, torch.randn(3, 2, 2), lambda x: x, ["a"], device=CPU)


class CharTokenizer:
    """A stand-in tokenizer: one id per character, right padding, mask of real tokens."""

    def __call__(self, texts, padding=True, truncation=True, max_length=32, return_tensors="pt"):
        ids = [[2 + ord(c) % 50 for c in text][:max_length] for text in texts]
        width = max(len(row) for row in ids)
        from transformers import BatchEncoding

        return BatchEncoding({
            "input_ids": torch.tensor([row + [0] * (width - len(row)) for row in ids]),
            "attention_mask": torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])})


def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    return BertModel(config, add_pooling_layer=False).eval()


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=32, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def test_sentence_embeddings_are_unit_length_and_ignore_padding():
    tokenizer, encoder = CharTokenizer(), tiny_bert()
    alone = sentence_embeddings(tokenizer, encoder, ["hi"], device=CPU)
    padded = sentence_embeddings(tokenizer, encoder, ["hi", "a much longer sentence"], device=CPU)
    assert torch.allclose(padded.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.allclose(alone[0], padded[0], atol=1e-4)
    sims = cosine_similarity_matrix(padded)
    assert torch.allclose(sims.diagonal(), torch.ones(2), atol=1e-5)
    with pytest.raises(ValueError, match="no texts"):
        sentence_embeddings(tokenizer, encoder, [], device=CPU)


def test_future_token_influence_separates_causal_from_bidirectional():
    ids = torch.tensor([[5, 9, 13, 17, 21]])
    causal = future_token_influence(tiny_llama().model, ids, replacement_id=40)
    bidirectional = future_token_influence(tiny_bert(), ids, replacement_id=40)
    assert causal[:-1].max() < 1e-5 and causal[-1] > 0.01
    assert bidirectional[:-1].min() > 1e-4
    with pytest.raises(ValueError, match="1 x n"):
        future_token_influence(tiny_bert(), torch.tensor([5, 6]), 1)


def test_attention_map_of_a_causal_model_is_lower_triangular():
    model = tiny_llama()
    model.set_attn_implementation("eager")
    weights = attention_map(model, torch.tensor([[3, 4, 5, 6]]), layer=0)
    assert weights.shape == (4, 4)
    assert torch.allclose(weights.sum(dim=1), torch.ones(4), atol=1e-5)
    assert weights.triu(diagonal=1).abs().max() == 0
