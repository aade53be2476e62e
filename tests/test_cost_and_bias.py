"""Notebook 12b's tools: the cost of each fine-tuning method, and bias measured by group."""

import numpy as np
import pytest
import torch
from torch import nn

from tlutils.core.compare import Budget, Trial, compare
from tlutils.core.datasets import TextDataset
from tlutils.course.challenges import (
    COST_METHODS,
    LastBlockClassifier,
    cost_arms,
    cost_model,
    cost_table,
    group_gap_arms,
    group_predictions,
    imbalanced_pool,
    mitigation_arms,
    states_before_last_block,
)
from tlutils.topics.bias import WEAT_TESTS, group_balanced_weights, weat_table, worst_group_accuracy
from tlutils.topics.efficient import (
    add_bert_adapters,
    checkpoint_bytes,
    inference_seconds,
    quantize_dynamic_int8,
    serialized_bytes,
    step_seconds,
    trainable_bytes,
    training_memory_bytes,
)


class ToyTokenizer:
    """Whitespace tokenizer over a fixed vocabulary, enough for TextDataset."""

    pad_token_id, padding_side = 0, "right"

    def __call__(self, texts, truncation=True, max_length=16):
        return {"input_ids": [[2 + (hash(w) % 40) for w in t.split()][:max_length] for t in texts]}


@pytest.fixture(scope="module")
def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=48, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    return BertModel(config, add_pooling_layer=False).eval()


def _text_data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    words = {1: "good great fine".split(), 0: "bad awful poor".split()}
    texts = [" ".join(words[int(y)][: 1 + i % 3]) + " film" for i, y in enumerate(labels)]
    return TextDataset(texts, labels, ToyTokenizer(), max_length=8)


def _batch(dataset, n=8):
    return dataset.collate([dataset[i] for i in range(n)])


def test_cost_model_trains_only_what_each_method_names(tiny_bert):
    trained = {}
    for method in COST_METHODS:
        model = cost_model(tiny_bert, method, 2, seed=0)
        trained[method] = {n for n, p in model.named_parameters() if p.requires_grad}
        assert {"classifier.weight", "classifier.bias"} <= trained[method]
    every = {n for n, _ in cost_model(tiny_bert, "full fine-tuning", 2, 0).named_parameters()}
    assert trained["full fine-tuning"] == every
    assert all(n.endswith("bias") or n.startswith("classifier") for n in trained["BitFit"])
    assert all("lora_" in n or n.startswith("classifier") for n in trained["LoRA"]) and len(trained["LoRA"]) > 2
    assert all("output.dense.1." in n or n.startswith("classifier") for n in trained["adapters"])
    assert all("layer.1." in n or n.startswith("classifier") for n in trained["last block"])
    assert trained["head only"] == {"classifier.weight", "classifier.bias"}
    assert not any("lora_" in n or "dense.1." in n for n, _ in tiny_bert.named_parameters()), "the encoder is copied"


def test_adapters_start_as_the_identity(tiny_bert):
    import copy

    inputs = {"input_ids": torch.tensor([[3, 4, 5, 6]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    adapted = add_bert_adapters(copy.deepcopy(tiny_bert), bottleneck=4).eval()
    with torch.no_grad():
        assert torch.allclose(adapted(**inputs).last_hidden_state, tiny_bert(**inputs).last_hidden_state, atol=1e-6)
    assert all("output.dense.1." in n for n, p in adapted.named_parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="BERT-family"):
        add_bert_adapters(nn.Linear(3, 3))


def test_training_memory_counts_what_a_frozen_body_does_not_save(tiny_bert):
    data = _text_data()
    batch = _batch(data)
    inputs, targets = {k: v for k, v in batch.items() if k != "labels"}, batch["labels"]
    full = training_memory_bytes(cost_model(tiny_bert, "full fine-tuning", 2, 0), inputs, targets)
    head = training_memory_bytes(cost_model(tiny_bert, "head only", 2, 0), inputs, targets)
    lora = training_memory_bytes(cost_model(tiny_bert, "LoRA", 2, 0), inputs, targets)
    assert head["activations"] < 0.1 * full["activations"] < lora["activations"]
    assert full["optimizer"] == 2 * full["gradients"]
    assert full["total"] == sum(value for key, value in full.items() if key != "total")
    assert full["weights"] == head["weights"]


def test_cost_table_and_checkpoints(tiny_bert, tmp_path):
    batch = _batch(_text_data())
    table = cost_table(tiny_bert, batch, tmp_path, repeats=1)
    assert list(table.index) == list(COST_METHODS)
    assert np.allclose(table["optimizer_MB"], 2 * table["gradients_MB"], rtol=0.1)  # + one step counter per tensor
    assert table["checkpoint_MB"].idxmax() == "full fine-tuning" and (table["seconds_per_step"] > 0).all()
    assert len(list(tmp_path.glob("*.safetensors"))) == len(COST_METHODS)


def test_checkpoint_serialized_and_timing_helpers(tmp_path):
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    model[0].requires_grad_(False)
    size = checkpoint_bytes(model, tmp_path / "head.safetensors")
    assert trainable_bytes(model) <= size < trainable_bytes(model) + 4096
    assert checkpoint_bytes(model, tmp_path / "all.safetensors", trainable_only=False) > size
    with pytest.raises(ValueError, match="nothing to save"):
        checkpoint_bytes(nn.Linear(2, 2).requires_grad_(False), tmp_path / "none.safetensors")
    assert serialized_bytes(quantize_dynamic_int8(model)) < 0.6 * serialized_bytes(model)
    before = [p.clone() for p in model.parameters()]

    class Wrapped(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    wrapped = Wrapped(model)
    assert step_seconds(wrapped, {"x": torch.randn(4, 64)}, torch.tensor([0, 1, 0, 1]), repeats=2) > 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())), "timing trains a copy"
    assert inference_seconds(wrapped, {"x": torch.randn(4, 64)}, repeats=2) > 0


def test_cost_arms_search_the_rate_once_and_loss_falls(tiny_bert):
    from torch.utils.data import DataLoader

    data = _text_data(48)
    val_loader = DataLoader(data, batch_size=16, collate_fn=data.collate)
    grid = {m: (1e-3, 1e-2) for m in COST_METHODS}
    chosen, scores, kept = {}, {}, {}
    arms = cost_arms(tiny_bert, data, val_loader, grid, batch_size=8, steps=4, chosen=chosen, grid_scores=scores,
                     kept=kept)
    arms = {m: arms[m] for m in ("LoRA", "head only")}
    result = compare(arms, seeds=[0, 1], budget=Budget(steps=8), progress=False,
                     score_test=lambda out: out.val)
    steps = result.table.set_index(["arm", "seed"])["steps"]
    assert steps[("LoRA", 0)] == 8 and steps[("LoRA", 1)] == 4, "the search runs at the first seed only"
    assert set(chosen) == {"LoRA", "head only"} and len(scores) == 2 * 2 + 2
    assert kept == {}
    from tlutils.core.train import fit

    model = cost_model(tiny_bert, "LoRA", 2, 0)
    history = fit(model, DataLoader(data, batch_size=8, collate_fn=data.collate), epochs=6, lr=1e-2, progress=False)
    assert history.train_loss[-1] < history.train_loss[0]


def test_weat_lists_and_table():
    for name, lists in WEAT_TESTS.items():
        assert set(lists) == {"X", "Y", "A", "B"} and len(lists["X"]) == len(lists["Y"]) >= 8, name
        assert all(len(set(words)) == len(words) for words in lists.values()), name
    assert len(WEAT_TESTS["flowers/insects ~ pleasant/unpleasant (WEAT 1)"]["A"]) == 25
    vocabulary = sorted({w for lists in WEAT_TESTS.values() for words in lists.values() for w in words})
    rng = np.random.default_rng(0)
    vectors = {w: rng.normal(size=8) for w in vocabulary}
    table = weat_table(lambda words: np.stack([vectors[w] for w in words]), permutations=200)
    assert list(table.index) == list(WEAT_TESTS) and table["p_value"].between(0, 1).all()


def test_group_weights_worst_group_and_imbalanced_pool():
    groups = np.array(["a"] * 6 + ["b"] * 2)
    weights = group_balanced_weights(groups)
    assert weights.mean() == pytest.approx(1.0)
    assert weights[groups == "a"].sum() == pytest.approx(weights[groups == "b"].sum())
    assert worst_group_accuracy([0, 1, 1, 1], [0, 1, 0, 1], ["a", "a", "b", "b"]) == 0.5
    labels = np.tile(np.arange(3), 8)
    speakers = np.repeat(["x", "y"], 12)
    pool = imbalanced_pool(speakers, "y", 1, labels, seed=0)
    assert (speakers[pool] == "x").sum() == 12 and (speakers[pool] == "y").sum() == 3
    assert sorted(labels[pool][speakers[pool] == "y"]) == [0, 1, 2]


def test_mitigation_arms_balance_the_batches():
    torch.manual_seed(0)
    labels = torch.arange(10).repeat(12)
    features = nn.functional.one_hot(labels, 10).float() + 0.3 * torch.randn(len(labels), 10)
    groups = np.array(["big"] * 100 + ["small"] * 20)
    pools = {0: np.arange(120)}
    arms = mitigation_arms(features, labels, groups, pools, (features[:20], labels[:20]), groups[:20], steps=20,
                           batch_size=16, lr=1e-1)
    outcomes = {name: arm(Trial(seed=0, budget=Budget(steps=20))) for name, arm in arms.items()}
    assert all(o.steps == 20 and 0 <= o.val <= 1 for o in outcomes.values())
    predictions = group_predictions(outcomes["group-balanced sampling"].predictor, features)
    assert (predictions == labels.numpy()).mean() > 0.5


def test_whisper_last_block_states_and_arms(temp_cache):
    from transformers import WhisperConfig, WhisperModel

    from tlutils.topics.speech import truncate_whisper_encoder

    torch.manual_seed(0)
    config = WhisperConfig(d_model=16, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=32,
                           decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=32, num_mel_bins=80,
                           max_source_positions=50, vocab_size=60, pad_token_id=0,
                           bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    encoder = truncate_whisper_encoder(WhisperModel(config).encoder, seconds=0.2)
    mels, labels = torch.randn(40, 80, 20), torch.arange(10).repeat(4)
    states = states_before_last_block(encoder, mels, labels, "test_12b_states", "toy")
    assert states.shape == (40, 10, 16)
    assert torch.equal(states, states_before_last_block(encoder, mels, labels, "test_12b_states", "toy"))
    groups = np.repeat(["p", "q"], 20)
    frozen = LastBlockClassifier(encoder, 10, seed=0, train_block=False)
    with torch.no_grad():
        pooled = frozen.pooled(states)
    models = {}
    arms = group_gap_arms(encoder, (states, labels), pooled, (states, labels), groups, steps=5, batch_size=8,
                          lr_block=1e-3, lr_head=1e-2, models=models)
    result = compare(arms, seeds=[0, 1], budget=Budget(steps=5), progress=False, score_test=lambda out: out.val)
    assert set(result.arms) == {"head on frozen encoder", "fine-tuned last block"} and len(models) == 4
    trainable = {name: sum(p.numel() for p in m.parameters() if p.requires_grad) for (name, seed), m in models.items()}
    assert trainable["head on frozen encoder"] == 16 * 10 + 10 < trainable["fine-tuned last block"]
