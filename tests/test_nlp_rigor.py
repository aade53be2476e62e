"""Splits, paired gaps, the QA rule baseline and the seeded arms of notebook 07."""

import numpy as np
import pytest
import torch

from tests.test_nlp import tiny_bert, word_tokenizer
from tlutils.core.compare import compare
from tlutils.topics.qa import QAExample, rule_speaker_answers
from tlutils.topics.text import independent_gap, paired_gap, per_class_split


def test_per_class_split_is_balanced_disjoint_and_seeded():
    labels = np.repeat([0, 1, 2], 10)
    parts = per_class_split(labels, {"train": 4, "val": 3, "test": 2}, seed=0)
    assert [len(parts[name]) for name in ("train", "val", "test")] == [12, 9, 6]
    for name, n in (("train", 4), ("val", 3), ("test", 2)):
        assert np.bincount(labels[parts[name]], minlength=3).tolist() == [n] * 3
    together = np.concatenate(list(parts.values()))
    assert len(set(together.tolist())) == len(together)            # no example in two parts
    again = per_class_split(labels, {"train": 4, "val": 3, "test": 2}, seed=0)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    other = per_class_split(labels, {"train": 4, "val": 3, "test": 2}, seed=1)
    assert not np.array_equal(np.sort(parts["train"]), np.sort(other["train"]))
    with pytest.raises(ValueError, match="fewer examples"):
        per_class_split(labels, {"train": 8, "val": 3}, seed=0)
    with pytest.raises(ValueError, match="positive whole numbers"):
        per_class_split(labels, {"train": 0}, seed=0)


def test_paired_and_independent_gaps():
    gap, se = paired_gap([1, 1, 0, 1], [1, 0, 0, 0])
    assert gap == pytest.approx(0.5) and se == pytest.approx(np.std([0, 1, 0, 1], ddof=1) / 2)
    assert paired_gap([1, 0, 1], [1, 0, 1]) == (0.0, 0.0)
    with pytest.raises(ValueError):
        paired_gap([1, 0], [1])
    gap, se = independent_gap(0.8, 1000, 0.7, 1000)
    assert gap == pytest.approx(0.1) and se == pytest.approx(np.sqrt(0.16 / 1000 + 0.21 / 1000))
    with pytest.raises(ValueError):
        independent_gap(1.2, 10, 0.5, 10)


def test_rule_baseline_answers_the_name_before_the_verb():
    context = "Profits fell. Mr Lee said costs rose. Ann Smith said sales rose sharply."
    question = QAExample("Who said sales rose sharply?", context, "Ann Smith", context.index("Ann Smith"))
    assert rule_speaker_answers([question]) == ["Mr Lee"]                    # the first "said" belongs to another sentence
    assert rule_speaker_answers([question], match_clause=True) == ["Ann Smith"]
    nothing = QAExample("Who told them?", "Nobody spoke. Ann Smith said so.", "Ann Smith", 14)
    assert rule_speaker_answers([nothing]) == [""]


def test_seeded_text_arms_choose_on_validation_and_fine_tune(monkeypatch):
    import tlutils.core.models as models
    from tlutils.course.text_comparison import predictions_correct, seeded_text_arms

    tokenizer = word_tokenizer()
    monkeypatch.setattr(models, "load_text_encoder", lambda name: (tokenizer, tiny_bert(tokenizer.vocab_size)))
    words = {1: ["good", "great", "fine"], 0: ["bad", "awful", "poor"]}
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 12)
    texts = [f"the film was {rng.choice(words[y])} {rng.choice(words[y])}" for y in labels]
    features = torch.tensor(np.c_[labels + rng.normal(0, 0.3, len(labels)), rng.normal(size=len(labels))],
                            dtype=torch.float32)
    test = (texts[:8], labels[:8])
    kept = {}
    arms, score_test, budget = seeded_text_arms(
        (texts, labels), features, test, features[:8], sizes={"train": 4, "val": 4}, encoder_name="tiny",
        tokenizer=tokenizer, num_classes=2, max_length=16, batch_size=4, epochs=2,
        recipes={"one rate": {"lr": 1e-3}}, models=kept, verbose=False, device=torch.device("cpu"))
    assert budget.steps == 4 and list(arms) == ["TF-IDF + logistic regression", "frozen encoder + linear head",
                                                 "fine-tuning"]
    result = compare(arms, seeds=[0, 1], budget=budget, score_test=score_test, progress=False)
    table = result.table.set_index(["arm", "seed"])
    assert table.loc[("frozen encoder + linear head", 0), "test"] > 0.8
    assert set(table.loc[("TF-IDF + logistic regression", 0), "choice"]) == {"C"}
    assert set(table.loc[("fine-tuning", 1), "choice"]) == {"epoch", "recipe"} and set(kept) == {0, 1}
    from tlutils.core.datasets import text_loader

    correct = predictions_correct(kept[0], text_loader(*test, tokenizer, 16, 4), test[1], torch.device("cpu"))
    assert correct.dtype == bool and correct.mean() == pytest.approx(table.loc[("fine-tuning", 0), "test"])


def test_chat_prompt_rouge_and_the_causal_lm_arm():
    from tests.test_nlp import headline_data, tiny_llama
    from tlutils.core.compare import Budget
    from tlutils.topics.language_models import (causal_lm_arm, chat_headline_prompt, headline_rouge,
                                                unfreeze_last_decoder_blocks)

    tokenizer = word_tokenizer()
    with pytest.raises(ValueError, match="no chat template"):
        chat_headline_prompt(tokenizer, "Article: sales rose\nHeadline:")
    tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    prompt = chat_headline_prompt(tokenizer, "Article: sales rose\nHeadline:", [("Article: profits fell\nHeadline:", "profits fell")],
                                  instruction="Who")
    assert prompt == "<user> Who\nArticle: profits fell\n<assistant> profits fell\n<user> Who\nArticle: sales rose\n<assistant>"
    data = headline_data(tokenizer)
    chosen, kept = {}, {}
    arm = causal_lm_arm(tiny_llama(tokenizer.vocab_size), lambda m: unfreeze_last_decoder_blocks(m, 1), [1e-3, 1e-2],
                        data, data, batch_size=4, epochs=2, name="blocks", chosen=chosen, keep=kept, verbose=False,
                        device=torch.device("cpu"))
    result = compare({"blocks": arm}, seeds=[0, 1], budget=Budget(steps=8), progress=False,
                     score_test=lambda out: float(np.mean(headline_rouge(out.predictor, tokenizer, ["Article: profits fell\nHeadline:"],
                                                                        ["profits fell"], 3, device=torch.device("cpu"))[0])))
    rows = result.table.set_index("seed")
    assert rows.loc[0, "steps"] == 8 and rows.loc[1, "steps"] == 4        # the search runs at the first seed only
    assert rows.loc[1, "choice"]["lr"] == chosen["blocks"] and set(kept) == {("blocks", 0), ("blocks", 1)}
    assert rows["val"].max() < 0                                          # val is minus the validation loss
    scores, texts = headline_rouge(kept["blocks", 0], tokenizer, ["Article: sales rose\nHeadline:"], ["sales rose"], 3,
                                   device=torch.device("cpu"))
    assert len(scores) == len(texts) == 1 and 0.0 <= scores[0] <= 1.0
