"""Tests of the text topics (text, qa, language_models, peft) on tiny random transformers and a word-level tokenizer built here (no downloads)."""

import math

import numpy as np
import pytest
import torch

from tlutils.core.datasets import LengthGroupedBatchSampler, text_loader
from tlutils.core.features import train_linear_probe
from tlutils.core.metrics import exact_match, normalize_answer, qa_scores, rouge_l, rouge_n, rouge_scores, token_f1
from tlutils.core.plots import plot_attention_masks
from tlutils.core.runtime import set_seed
from tlutils.core.surgery import head_name, layerwise_param_groups, model_blocks, trainable_parameter_count
from tlutils.core.train import fit
from tlutils.topics.language_models import (
    IGNORE_INDEX,
    CausalLMDataset,
    bidirectional_mask,
    causal_lm_loss,
    causal_mask,
    generate_texts,
    headline_prompt,
    lm_loader,
    next_token_probs,
    permutation_mask,
    perplexity,
    shuffle_words,
    target_loss,
    top_p_filter,
    unfreeze_last_decoder_blocks,
)
from tlutils.topics.peft import add_lora
from tlutils.topics.qa import (
    QADataset,
    QAExample,
    SpanQAModel,
    _widen_to_words,
    best_span,
    predict_answers,
    sentence_spans,
    span_loss,
    speaker_questions,
)
from tlutils.topics.text import EncoderClassifier, fit_tfidf_logreg, pool_hidden_states, pooled_features

WORDS = ("good great fine bad awful poor film was the a plot Mr Smith Jones Acme said told sales rose fell "
         "by 2 % profits who ? . , it would grow Who next year").split()


def word_tokenizer():
    """A fast word-level tokenizer with BERT's special tokens and an end-of-sequence token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[EOS]"]
    vocab = {token: i for i, token in enumerate(specials + sorted(set(WORDS)))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", eos_token="[EOS]")


def tiny_bert(vocab_size, seed=0):
    from transformers import BertConfig, BertModel

    set_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    return BertModel(config)


def tiny_llama(vocab_size, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    set_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config)


# ------------------------------------------------------------------ pooling and classification


def test_mean_pooling_ignores_padding_and_cls_takes_the_first_token():
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    mean = pool_hidden_states(hidden, mask, "mean")
    assert torch.allclose(mean[1], hidden[1, :2].mean(0))
    changed = hidden.clone()
    changed[1, 2:] = 100.0  # padding states must not matter
    assert torch.allclose(pool_hidden_states(changed, mask, "mean"), mean)
    assert torch.equal(pool_hidden_states(hidden, mask, "cls"), hidden[:, 0])
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        pool_hidden_states(hidden, mask, "max")
    with pytest.raises(ValueError, match="matching"):
        pool_hidden_states(hidden, mask[:, :3], "mean")


def test_encoder_classifier_learns_and_fits_the_surgery_tools():
    tokenizer = word_tokenizer()
    texts = ["the film was good", "great plot", "a fine film", "the plot was bad", "awful film", "poor plot"] * 4
    labels = [1, 1, 1, 0, 0, 0] * 4
    set_seed(0)
    model = EncoderClassifier(tiny_bert(tokenizer.vocab_size), num_classes=2, pooling="cls")
    assert head_name(model) == "classifier"
    assert [name for name, _ in model_blocks(model)][:2] == ["encoder.embeddings", "encoder.encoder.layer.0"]
    optimizer = torch.optim.AdamW(layerwise_param_groups(model, head_lr=3e-3, decay=0.5))
    loader = text_loader(texts, labels, tokenizer, max_length=16, batch_size=8, shuffle=True, seed=0)
    history = fit(model, loader, epochs=6, optimizer=optimizer, seed=0, progress=False, device=torch.device("cpu"))
    assert history.train_loss[-1] < history.train_loss[0]
    with pytest.raises(ValueError, match="num_classes"):
        EncoderClassifier(tiny_bert(tokenizer.vocab_size), num_classes=1)


def test_pooled_features_are_cached_and_probe_trains(temp_cache):
    tokenizer = word_tokenizer()
    encoder = tiny_bert(tokenizer.vocab_size)
    texts, labels = ["good film", "bad film", "great plot", "awful plot"], [1, 0, 1, 0]
    first = pooled_features(encoder, tokenizer, texts, labels, "mean", cache_name="test_nlp", progress=False,
                                device=torch.device("cpu"))
    assert first[0].shape == (4, 32) and (temp_cache / "features" / "test_nlp.safetensors").exists()
    again = pooled_features(encoder, tokenizer, texts, labels, "mean", cache_name="test_nlp", progress=False,
                                device=torch.device("cpu"))
    assert torch.equal(first[0], again[0])
    probe, history = train_linear_probe(first[0], first[1], num_classes=2, epochs=5, device=torch.device("cpu"))
    assert probe.head.weight.shape == (2, 32) and history.train_loss[-1] < history.train_loss[0]


def test_tfidf_baseline_fits_and_checks_its_input():
    texts = ["good film", "great film", "bad film", "awful film"]
    model = fit_tfidf_logreg(texts, [1, 1, 0, 0])
    assert model.score(texts, [1, 1, 0, 0]) == 1.0
    with pytest.raises(ValueError, match="one label per text"):
        fit_tfidf_logreg(texts, [1, 0])


# ------------------------------------------------------------------ question answering

ARTICLE = ("Acme profits rise\n"
           "Sales at Acme rose by 2% to $1.5bn in the last quarter. Mr Smith said sales would grow next year "
           "because of the new plant.\n"
           "The company said profits rose for the third year running. Jones told reporters it was a good year.")


def test_sentence_spans_keep_decimal_numbers_together():
    body = ARTICLE.split("\n", 1)[1]
    sentences = [body[s:e] for s, e in sentence_spans(body)]
    assert sentences[0] == "Sales at Acme rose by 2% to $1.5bn in the last quarter."
    assert len(sentences) == 4


def test_speaker_questions_turn_said_sentences_into_questions():
    examples = speaker_questions([ARTICLE], max_per_article=5)
    assert [e.answer for e in examples] == ["Mr Smith", "Jones"]  # "The company" is not a name
    example = examples[0]
    assert example.question == "Who said sales would grow next year because of the new plant?"
    assert example.context[example.answer_start:].startswith("Mr Smith said")
    with pytest.raises(ValueError, match="is not at character"):
        QAExample("Who?", "Mr Smith said so.", "Smith", 0)


def qa_examples():
    context = "Sales rose by 2 % . Mr Smith said profits would grow . Jones said sales fell ."
    return [QAExample("Who said profits would grow ?", context, "Mr Smith", context.index("Mr Smith")),
            QAExample("Who said sales fell ?", context, "Jones", context.index("Jones"))] * 6


def test_qa_dataset_aligns_answers_with_tokens_and_drops_cut_answers():
    tokenizer = word_tokenizer()
    dataset = QADataset(qa_examples(), tokenizer, max_length=64)
    item = dataset[0]
    start, end = item["labels"].tolist()
    assert tokenizer.decode(item["input_ids"][start:end + 1]) == "Mr Smith"
    assert item["token_type_ids"][start] == 1 and dataset.context_masks[0][start]
    short = QADataset(qa_examples()[:2], tokenizer, max_length=20)  # the second answer is cut off
    assert len(short) == 1 and short.n_dropped == 1
    batch = dataset.collate([dataset[0], dataset[1]])
    assert batch["labels"].shape == (2, 2) and batch["input_ids"].shape[0] == 2


def test_span_model_learns_and_predicts_context_spans():
    tokenizer = word_tokenizer()
    dataset = QADataset(qa_examples(), tokenizer, max_length=64)
    set_seed(0)
    model = SpanQAModel(tiny_bert(tokenizer.vocab_size))
    assert head_name(model) == "qa_outputs"
    loader = dataset.loader(batch_size=4, shuffle=True, seed=0)
    history = fit(model, loader, epochs=15, lr=3e-3, loss_fn=span_loss, seed=0, progress=False,
                  device=torch.device("cpu"))
    assert history.train_loss[-1] < 0.5 * history.train_loss[0]
    answers = predict_answers(model, dataset, device=torch.device("cpu"))
    assert all(answer in dataset.examples[0].context for answer in answers)
    assert qa_scores(answers, [e.answer for e in dataset.examples])["exact_match"] == 1.0


def test_spans_are_widened_to_whole_words():
    text = "Mr Highfield said, firmly"
    assert _widen_to_words(text, 7, 12) == (3, 12)    # "field" (a ##piece) -> "Highfield"
    assert _widen_to_words(text, 0, 7) == (0, 12)     # "Mr High" -> "Mr Highfield"
    assert _widen_to_words(text, 17, 25) == (17, 25)  # ", firmly" starts at a boundary already


def test_best_span_respects_order_length_and_context():
    start = torch.tensor([0.0, 5.0, 0.0, 0.0, 9.0])
    end = torch.tensor([9.0, 0.0, 0.0, 4.0, 0.0])
    allowed = torch.tensor([False, True, True, True, True])
    assert best_span(start, end, allowed, max_answer_tokens=5) == (1, 3)  # end 0 is before start / not allowed
    assert best_span(start, end, allowed, max_answer_tokens=1) == (4, 4)
    with pytest.raises(ValueError, match="no allowed span"):
        best_span(start, end, torch.zeros(5, dtype=torch.bool))


def test_span_loss_checks_shapes():
    with pytest.raises(ValueError, match="batch x 2 x tokens"):
        span_loss(torch.zeros(2, 5), torch.zeros(2, 2, dtype=torch.long))


def test_squad_metrics():
    assert normalize_answer("The  Acme, Inc.") == "acme inc"
    assert exact_match("the Bank of England", "Bank of England") == 1.0
    assert token_f1("Mr Tony Blair", "Tony Blair") == pytest.approx(0.8)
    assert token_f1("Gordon Brown", "Tony Blair") == 0.0
    assert qa_scores(["Tony Blair", "Brown"], ["Tony Blair", "Gordon Brown"]) == pytest.approx(
        {"exact_match": 0.5, "f1": (1 + 2 / 3) / 2})
    with pytest.raises(ValueError, match="one prediction per question"):
        qa_scores(["a"], ["a", "b"])


# ------------------------------------------------------------------ causal language models


def test_causal_lm_dataset_masks_the_prompt_and_pads_labels():
    tokenizer = word_tokenizer()
    dataset = CausalLMDataset(["the film was", "the plot"], ["good", "was awful"], tokenizer)
    first = dataset[0]
    assert first["labels"].tolist()[:3] == [IGNORE_INDEX] * 3
    assert first["labels"].tolist()[3:] == first["input_ids"].tolist()[3:]
    assert first["input_ids"][-1] == tokenizer.eos_token_id
    batch = dataset.collate([dataset[0], dataset[1]])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["attention_mask"].sum() == len(dataset[0]["input_ids"]) + len(dataset[1]["input_ids"])
    with pytest.raises(ValueError, match="2 prompts but 1 targets"):
        CausalLMDataset(["a", "b"], ["c"], tokenizer)


def test_causal_lm_loss_matches_the_models_own_loss():
    tokenizer = word_tokenizer()
    model = tiny_llama(tokenizer.vocab_size).eval()
    ids = tokenizer(["the film was good"], add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        output = model(input_ids=ids, labels=ids)
    assert causal_lm_loss(output.logits, ids) == pytest.approx(float(output.loss), rel=1e-5)
    assert perplexity(model, tokenizer, ["the film was good"], device=torch.device("cpu")) == pytest.approx(
        math.exp(float(output.loss)), rel=1e-5)


def headline_data(tokenizer):
    prompts = ["Article: sales rose by 2 %\nHeadline:", "Article: profits fell\nHeadline:"] * 4
    targets = ["sales rose", "profits fell"] * 4
    return CausalLMDataset(prompts, targets, tokenizer)


def test_lora_adds_low_rank_parameters_and_starts_at_the_base_model():
    tokenizer = word_tokenizer()
    base = tiny_llama(tokenizer.vocab_size)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        before = base(input_ids=ids).logits
    model = add_lora(base, r=4, alpha=8, target_modules=("q_proj", "v_proj"))
    # q_proj 32 -> 32 and v_proj 32 -> 16 (2 key-value heads of 8): r (d_in + d_out) each, 3 layers
    assert trainable_parameter_count(model) == 3 * 4 * ((32 + 32) + (32 + 16))
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, before)  # B starts at zero
    loader = lm_loader(headline_data(tokenizer), batch_size=4, shuffle=True, seed=0)
    history = fit(model, loader, epochs=6, lr=3e-2, loss_fn=causal_lm_loss, seed=0, progress=False,
                  device=torch.device("cpu"))
    assert history.train_loss[-1] < history.train_loss[0]
    with pytest.raises(ValueError, match="no modules named"):
        add_lora(tiny_llama(tokenizer.vocab_size), target_modules=("query",))


def test_last_blocks_training_and_generation():
    tokenizer = word_tokenizer()
    model = unfreeze_last_decoder_blocks(tiny_llama(tokenizer.vocab_size), k=1)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(name.startswith(("model.layers.2.", "model.norm.")) for name in trainable)
    assert not model.model.embed_tokens.weight.requires_grad
    loader = lm_loader(headline_data(tokenizer), batch_size=4, shuffle=True, seed=0, group_by_length=True)
    history = fit(model, loader, epochs=8, lr=1e-2, loss_fn=causal_lm_loss, seed=0, progress=False,
                  device=torch.device("cpu"))
    assert history.train_loss[-1] < history.train_loss[0]
    prompts = ["Article: profits fell\nHeadline:"]
    greedy = generate_texts(model, tokenizer, prompts, max_new_tokens=4, device=torch.device("cpu"))
    assert greedy == generate_texts(model, tokenizer, prompts, max_new_tokens=4, device=torch.device("cpu"))
    sampled = [generate_texts(model, tokenizer, prompts, 4, strategy="top_p", top_p=0.9, seed=1,
                                  device=torch.device("cpu")) for _ in range(2)]
    assert sampled[0] == sampled[1] and isinstance(sampled[0][0], str)
    assert tokenizer.padding_side == "right"  # restored after left-padded generation
    with pytest.raises(ValueError, match="k must be between 1 and 3"):
        unfreeze_last_decoder_blocks(tiny_llama(tokenizer.vocab_size), k=4)
    with pytest.raises(ValueError, match="unknown decoding strategy"):
        generate_texts(model, tokenizer, prompts, strategy="beam")


def test_top_p_filter_keeps_the_nucleus():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    assert torch.allclose(top_p_filter(probs, 0.8), torch.tensor([[0.0, 0.625, 0.0, 0.375]]))
    assert torch.allclose(top_p_filter(probs, 0.1), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    assert torch.allclose(top_p_filter(probs, 1.0), probs)
    with pytest.raises(ValueError, match="top_p must be in"):
        top_p_filter(probs, 0.0)


def test_shuffle_words_keeps_the_words():
    text = "one two three four five six"
    shuffled = shuffle_words(text, seed=0)
    assert sorted(shuffled.split()) == sorted(text.split()) and shuffled != text
    assert shuffled == shuffle_words(text, seed=0)


def test_headline_prompt_drops_the_headline():
    assert headline_prompt("Big news\nOne two three four", max_words=3) == "Article: One two three\nHeadline:"


# ------------------------------------------------------------------ ROUGE


def test_rouge_scores():
    assert rouge_n("the cat sat", "the cat sat") == 1.0
    assert rouge_n("cat sat on mat", "the cat sat", 1) == pytest.approx(2 * (2 / 4) * (2 / 3) / (2 / 4 + 2 / 3))
    assert rouge_n("cat sat", "sat cat", 2) == 0.0
    assert rouge_l("a b c d", "a c d e") == pytest.approx(0.75)  # LCS a c d
    assert rouge_l("", "a b") == 0.0
    scores = rouge_scores(["Blair wins vote", "x"], ["Blair wins key vote", "y"])
    assert set(scores) == {"rouge1", "rouge2", "rougeL"} and 0 < scores["rougeL"] < 1
    with pytest.raises(ValueError, match="one prediction per reference"):
        rouge_scores(["a"], [])


# ------------------------------------------------------------------ attention masks


def test_attention_masks_of_the_three_objectives():
    assert bidirectional_mask(3).all()
    assert torch.equal(causal_mask(3), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool))
    # order (2, 0, 1): position 2 is predicted first and sees nothing; position 1 sees 2 and 0
    query = permutation_mask([2, 0, 1])
    assert torch.equal(query, torch.tensor([[0, 0, 1], [1, 0, 1], [0, 0, 0]], dtype=torch.bool))
    assert torch.equal(permutation_mask([0, 1, 2]), causal_mask(3) & ~torch.eye(3, dtype=torch.bool))
    assert permutation_mask([2, 0, 1], content_stream=True).diagonal().all()
    with pytest.raises(ValueError, match="permutation"):
        permutation_mask([0, 0, 1])
    assert len(plot_attention_masks({"causal": causal_mask(3)}, ["a", "b", "c"]).axes) == 1


def test_next_token_probs_and_target_loss():
    tokenizer = word_tokenizer()
    model = tiny_llama(tokenizer.vocab_size)
    probs = next_token_probs(model, tokenizer, "the film", temperature=0.5, device=torch.device("cpu"))
    assert probs.shape == (tokenizer.vocab_size,) and probs.sum() == pytest.approx(1.0, rel=1e-5)
    loader = lm_loader(headline_data(tokenizer), batch_size=4)
    assert target_loss(model, loader, device=torch.device("cpu")) == pytest.approx(
        math.log(tokenizer.vocab_size), rel=0.2)  # an untrained model is close to uniform


def test_length_grouped_batches_cover_everything_with_less_padding():
    lengths = np.random.default_rng(0).integers(3, 60, size=200)
    sampler = LengthGroupedBatchSampler(lengths, batch_size=8, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 25
    assert sorted(i for batch in batches for i in batch) == list(range(200))
    padded = np.mean([lengths[b].max() for b in batches])
    random_padded = np.mean([lengths[i:i + 8].max() for i in range(0, 200, 8)])
    assert padded < 0.8 * random_padded
    assert batches == list(LengthGroupedBatchSampler(lengths, batch_size=8, seed=0))  # seeded
    assert batches != list(sampler)  # a new order every epoch
    tokenizer = word_tokenizer()
    loader = text_loader(["good film"] * 5 + ["the plot was bad"] * 5, [1] * 5 + [0] * 5, tokenizer,
                             batch_size=5, shuffle=True, seed=0, group_by_length=True)
    assert sorted(batch["input_ids"].shape[1] for batch in loader) == [4, 6]  # no mixed-length batch
