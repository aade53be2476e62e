"""Fine-tuning the top block of a text or speech encoder on cached lower-layer activations (notebook 11)."""

from __future__ import annotations

import pytest
import torch

from tlutils.course.scratch_vs_transfer import CachedTopClassifier, TextLowerLayers, WhisperLowerBlocks


def _tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    return BertModel(config).eval()


def _tiny_whisper_encoder():
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    torch.manual_seed(0)
    config = WhisperConfig(num_mel_bins=8, d_model=16, encoder_layers=2, encoder_attention_heads=2,
                           encoder_ffn_dim=32, max_source_positions=10)
    return WhisperEncoder(config).eval()


def test_unchanged_top_layer_on_cached_text_states_gives_the_frozen_mean_pooled_vector():
    from tlutils.topics.text import PooledEncoder

    bert = _tiny_bert()
    ids = torch.randint(1, 50, (4, 7))
    mask = torch.ones(4, 7, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    states = TextLowerLayers(bert, layer=2, max_length=12)(ids, mask)
    assert states.shape == (4, 12, 17) and torch.equal(states[:, :7, -1], mask.float())  # sanity check
    top = CachedTopClassifier(bert.encoder.layer[2:], torch.nn.Identity(), masked=True).eval()
    with torch.no_grad():
        expected = PooledEncoder(bert, "mean")(ids, mask)
        torch.testing.assert_close(top.pooled(states), expected, atol=1e-5, rtol=1e-5)


def test_unchanged_last_whisper_block_gives_the_frozen_last_layer_features():
    from tlutils.topics.speech import WhisperFeatures

    encoder = _tiny_whisper_encoder()
    mels = torch.randn(3, 8, 20)
    inputs = WhisperLowerBlocks(encoder, top=1)(mels)
    assert inputs.shape == (3, 10, 16)
    top = CachedTopClassifier(encoder.layers[-1:], torch.nn.Identity(), final_norm=encoder.layer_norm).eval()
    with torch.no_grad():
        torch.testing.assert_close(top.pooled(inputs), WhisperFeatures(encoder)(mels)[:, -1], atol=1e-5, rtol=1e-5)


def test_top_classifier_trains_a_copy_and_leaves_the_encoder_unchanged():
    bert = _tiny_bert()
    before = [p.detach().clone() for p in bert.encoder.layer[2].parameters()]
    states = TextLowerLayers(bert, layer=2, max_length=8)(torch.randint(1, 50, (6, 8)), torch.ones(6, 8, dtype=torch.long))
    model = CachedTopClassifier(bert.encoder.layer[2:], torch.nn.Linear(16, 2), masked=True).train()
    assert all(p.requires_grad for p in model.parameters())
    loss = torch.nn.functional.cross_entropy(model(states), torch.tensor([0, 1, 0, 1, 0, 1]))
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    assert all(torch.equal(a, b) for a, b in zip(before, bert.encoder.layer[2].parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(before, model.blocks[0].parameters()))


def test_text_layer_states_caches_and_returns_blocks(monkeypatch, tmp_path):
    from tlutils.course import scratch_vs_transfer as svt

    from tlutils.core.paths import cache_dir

    folder = cache_dir() / "minilm_l3"
    if not (folder / "tokenizer.json").exists() and not (folder / "vocab.txt").exists():
        pytest.skip("the MiniLM tokenizer is not prepared under data/cache")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    bert = _tiny_bert()
    bert.resize_token_embeddings(tokenizer.vocab_size)
    monkeypatch.setattr("tlutils.core.features.cache_dir", lambda: tmp_path)
    args = (bert, tokenizer, ["abc", "hello there, a longer text"], [0, 1])
    states, labels = svt.text_layer_states(*args, layer=1, max_length=8, cache_name="t_states", device="cpu")
    again, _ = svt.text_layer_states(*args, layer=1, max_length=8, cache_name="t_states", device="cpu")
    assert (tmp_path / "features" / "t_states.safetensors").exists() and torch.equal(states, again)
    assert states.shape == (2, 8, 17) and labels.tolist() == [0, 1]
    assert states[0, :, -1].sum() < states[1, :, -1].sum() == 8


def test_bad_inputs_get_clear_errors():
    bert = _tiny_bert()
    with pytest.raises(ValueError, match="layer must be between"):
        TextLowerLayers(bert, layer=3)
    with pytest.raises(ValueError, match="more than max_length"):
        TextLowerLayers(bert, layer=1, max_length=4)(torch.ones(1, 6, dtype=torch.long), torch.ones(1, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="top must be between"):
        WhisperLowerBlocks(_tiny_whisper_encoder(), top=3)
    with pytest.raises(ValueError, match="N x positions x channels"):
        CachedTopClassifier([], torch.nn.Identity()).pooled(torch.zeros(2, 3))


def test_layerwise_groups_give_the_head_its_own_rate():
    from tlutils.core.surgery import layerwise_param_groups

    model = CachedTopClassifier(_tiny_bert().encoder.layer[2:], torch.nn.Linear(16, 2), masked=True)
    groups = layerwise_param_groups(model, head_lr=1e-2, block_lrs=[1e-4, 1e-4])
    assert [(g["name"], g["lr"]) for g in groups] == [("head", 1e-2), ("blocks", 1e-4)]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
