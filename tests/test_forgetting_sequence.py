"""Forgetting beyond one head: a causal LM split at a decoder layer (cached lower part, trainable top),
LoRA on its last blocks, and two classification tasks learnt in sequence (EWC, replay, frozen body)."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from tlutils.core.compare import Budget, Trial
from tlutils.topics.forgetting import (
    LowerDecoder,
    UpperDecoder,
    causal_window_step,
    lora_upper,
    replay_step,
    token_windows,
    window_log_likelihood,
)
from tlutils.topics.regularizers import TwoHeadNet


def tiny_llama(layers: int = 3):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=32, max_position_embeddings=32,
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


class CharTokenizer:
    """One token per character (enough to test windowing)."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 64 for c in text]}


def test_token_windows_cut_consecutive_windows_and_refuse_short_texts():
    ids = token_windows(CharTokenizer(), ["abcd", "efgh"], length=3, count=3)
    assert ids.shape == (3, 3)
    assert ids.flatten().tolist() == [ord(c) % 64 for c in "abcd\nefg"] + [ord("h") % 64]
    with pytest.raises(ValueError, match="fewer than"):
        token_windows(CharTokenizer(), ["ab"], length=4, count=2)
    with pytest.raises(ValueError, match="length"):
        token_windows(CharTokenizer(), ["ab"], length=1, count=2)


def test_lower_and_upper_decoder_reproduce_the_whole_model():
    model = tiny_llama()
    ids = torch.randint(0, 64, (4, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(input_ids=ids).logits
        split = UpperDecoder(model, 1)(LowerDecoder(model, 1)(ids))
    torch.testing.assert_close(split, full, atol=1e-5, rtol=1e-5)


def test_upper_decoder_trains_its_copied_layers_only():
    model = tiny_llama()
    upper = UpperDecoder(model, 2)
    trainable = [n for n, p in upper.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("layers.") for n in trainable)
    assert upper.output_weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()  # shared, not copied
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    hidden = LowerDecoder(model, 2)(torch.randint(0, 64, (2, 8)))
    loss = causal_window_step()(upper.train(), (hidden, torch.randint(0, 64, (2, 8))), torch.device("cpu")).total
    loss.backward()
    torch.optim.SGD([p for p in upper.parameters() if p.requires_grad], lr=1.0).step()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters()), "the original model never changes"
    with pytest.raises(ValueError, match="block"):
        UpperDecoder(model, 3)
    with pytest.raises(ValueError, match="Llama"):
        LowerDecoder(nn.Linear(2, 2), 0)


def test_window_log_likelihood_is_minus_the_mean_token_loss():
    model = tiny_llama()
    ids = torch.randint(0, 64, (3, 6), generator=torch.Generator().manual_seed(2))
    upper, hidden = UpperDecoder(model, 1), LowerDecoder(model, 1)(ids)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1))
    assert window_log_likelihood(upper, hidden, ids, batch_size=2) == pytest.approx(-float(loss), rel=1e-5)
    assert math.exp(-window_log_likelihood(upper, hidden, ids)) > 1
    with pytest.raises(ValueError, match="does not match"):
        window_log_likelihood(upper, hidden, ids[:, :5])


def test_lora_upper_starts_at_the_model_and_trains_adapters_only():
    model = tiny_llama()
    ids = torch.randint(0, 64, (2, 7))
    hidden = LowerDecoder(model, 1)(ids)
    plain = UpperDecoder(model, 1)
    with torch.no_grad():
        expected = plain(hidden)
    lora = lora_upper(UpperDecoder(model, 1), r=2, alpha=4, seed=0)
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        torch.testing.assert_close(lora(hidden), expected)  # B = 0 at the start
    with pytest.raises(ValueError, match="rank"):
        lora_upper(UpperDecoder(model, 1), r=0)


def test_replay_step_adds_the_old_task_loss():
    torch.manual_seed(0)
    model = TwoHeadNet(nn.Linear(4, 8), nn.Linear(8, 3), nn.Linear(8, 2))
    new = (torch.randn(5, 4), torch.randint(0, 2, (5,)))
    old = (torch.randn(3, 4), torch.randint(0, 3, (3,)))
    loss = replay_step(0.5)(model, (new, old), torch.device("cpu"))
    task = nn.functional.cross_entropy(model(new[0], "target"), new[1])
    replay = nn.functional.cross_entropy(model(old[0], "source"), old[1])
    assert loss.total.item() == pytest.approx((task + 0.5 * replay).item(), rel=1e-6)
    assert set(loss.parts) == {"task", "replay"}
    with pytest.raises(ValueError, match="new_batch, old_batch"):
        replay_step()(model, new + old, torch.device("cpu"))
    with pytest.raises(ValueError):
        replay_step(-1.0)


def test_sequence_arms_measure_task_a_before_and_after_b():
    from tlutils.course.challenges import sequence_arms

    g = torch.Generator().manual_seed(0)
    top = nn.Sequential(nn.Flatten(), nn.Linear(4, 1280), nn.BatchNorm1d(1280), nn.ReLU())
    make = lambda n, k: (torch.randn(n, 4, 1, 1, generator=g), torch.arange(n) % k)
    task_a, task_a_test, task_b, task_b_val = make(40, 4), make(20, 4), make(40, 3), make(12, 3)
    retained = {}
    arms = sequence_arms(top, task_a, task_a_test, task_b, task_b_val, retained, batch_size=8, replay_per_class=2,
                         fisher_examples=10)
    assert set(arms) == {"plain (A then B)", "EWC", "replay (2/class of A)", "body frozen for B"}
    trial = Trial(seed=0, budget=Budget(steps=5))
    outcomes = {name: arm(trial) for name, arm in arms.items()}
    assert all(o.steps == 5 for o in outcomes.values())
    assert ("after A (before B)", 0) in retained
    # a frozen body and a frozen A head cannot change task A's predictions
    assert retained[("body frozen for B", 0)] == retained[("after A (before B)", 0)]
