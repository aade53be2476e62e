"""The standard-stack helpers of notebook 14, on tiny models and synthetic or tiny real data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_nlp import tiny_bert, word_tokenizer
from tlutils.core.compare import Budget, compare
from tlutils.core.data import NewsData, TextData
from tlutils.course import work_stack as ws

POSITIVE = ["good great film", "a great plot", "the film was fine", "good good plot", "great fine film", "a good film"]
NEGATIVE = ["bad awful film", "a poor plot", "the film was bad", "awful bad plot", "poor awful film", "a bad film"]


@pytest.fixture
def tiny_encoder(monkeypatch):
    """``load_text_encoder`` returns a word tokenizer and a 2-layer BERT (the same weights every call)."""
    import tlutils.core.models as models

    tokenizer = word_tokenizer()
    monkeypatch.setattr(models, "load_text_encoder", lambda name: (tokenizer, tiny_bert(tokenizer.vocab_size)))
    return tokenizer


def sentiment_data(copies: int = 4):
    texts = (POSITIVE + NEGATIVE) * copies
    return texts, np.array(([1] * len(POSITIVE) + [0] * len(NEGATIVE)) * copies)


def test_hf_dataset_tokenises_like_the_course_and_the_wrapper_returns_a_loss(tiny_encoder):
    data = ws.hf_text_dataset(POSITIVE[:2], [1, 0], tiny_encoder, max_length=8)
    assert data.column_names == ["label", "input_ids", "attention_mask"] or set(data.column_names) == {
        "label", "input_ids", "attention_mask"}
    assert data[0]["input_ids"] == tiny_encoder(POSITIVE[0])["input_ids"] and data[1]["label"] == 0
    _, model = ws._new_classifier("tiny", 2, seed=0)
    batch = tiny_encoder(POSITIVE[:2], padding=True, return_tensors="pt")
    out = ws.LossReturningClassifier(model)(batch["input_ids"], batch["attention_mask"], labels=torch.tensor([1, 0]))
    assert out["logits"].shape == (2, 2) and out["loss"].ndim == 0
    assert ws.accuracy_metric((np.array([[0.0, 1.0], [2.0, 0.0]]), np.array([1, 1]))) == {"accuracy": 0.5}


def test_trainer_and_fit_take_the_same_steps_in_the_same_order(tiny_encoder, tmp_path):
    texts, labels = sentiment_data(2)
    same = ws.in_order_check("tiny", texts, labels, steps=4, batch_size=6, lr=1e-3, max_length=8, seed=0,
                             work_dir=tmp_path)
    assert len(same["trainer_losses"]) == len(same["fit_losses"]) == 4
    assert same["max_loss_difference"] < 1e-5 and same["max_weight_difference"] < 1e-5


def test_trainer_arms_run_through_the_protocol_and_keep_the_runs(tiny_encoder, tmp_path):
    texts, labels = sentiment_data(4)
    runs = {}
    arms, score = ws.trainer_arms((texts, labels), (texts[:12], labels[:12]), sizes={"train": 8, "val": 4},
                                  encoder_name="tiny", num_classes=2, steps=3, batch_size=4, lr=1e-3, max_length=8,
                                  work_dir=tmp_path, models=runs, verbose=False)
    result = compare(arms, seeds=[0, 1], budget=Budget(steps=3), score_test=score, progress=False)
    assert set(result.arms) == {"Trainer + datasets", "tlutils fit"} and result.table["steps"].eq(3).all()
    assert result.table["test"].between(0, 1).all()
    kept = runs["tlutils fit", 0]
    assert len(kept["val"][0]) == 8 and np.isfinite(kept["final_train_loss"])


def test_instruction_sets_are_balanced_disjoint_and_answerable():
    reviews = TextData([f"review {i} was good" for i in range(40)], np.array([0, 1] * 20), ["rotten", "fresh"])
    topics = ["business", "sport", "tech"]
    news = NewsData([f"headline {i}\nbody" for i in range(60)], np.arange(60) % 3, topics,
                    [f"headline {i}" for i in range(60)])
    sets = ws.instruction_sets(reviews, news, {"train": 6, "test": 3}, seed=0)
    assert [len(sets[p]) for p in ("train", "test")] == [12, 6]
    for rows in sets.values():
        assert {r["task"] for r in rows} == {"sentiment", "topic"}
        assert all(r["answer"] in ("positive", "negative") for r in rows if r["task"] == "sentiment")
        assert all(r["answer"] in topics and "business, sport or tech" in r["request"] for r in rows if r["task"] == "topic")
    assert not {r["request"] for r in sets["train"]} & {r["request"] for r in sets["test"]}
    assert sum(r["answer"] == "positive" for r in sets["train"]) == 3
    assert sets == ws.instruction_sets(reviews, news, {"train": 6, "test": 3}, seed=0)


def test_sft_pairs_put_the_loss_on_the_answer_only():
    tokenizer = word_tokenizer()
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} . {% endfor %}"
                               "{% if add_generation_prompt %}assistant : {% endif %}")
    data = ws.sft_dataset(tokenizer, [{"request": "the film was good", "answer": "great"}])
    item = data[0]
    answer = item["input_ids"][item["labels"] != -100].tolist()
    assert tokenizer.decode(answer) == "great [EOS]"
    assert ws.chat_prompt(tokenizer, "a plot", [{"request": "the film", "answer": "good"}], system="fine") == \
        "system : fine . user : the film . assistant : good . user : a plot . assistant : "


def test_answers_are_normalised_to_their_first_word():
    assert ws.normalise_answer(" Positive.\n") == "positive"
    assert ws.normalise_answer("**Sport**: it is") == "sport"
    assert ws.normalise_answer("  ") == ""


def test_onnx_export_matches_torch_and_int8_is_smaller(tiny_encoder, tmp_path):
    _, model = ws._new_classifier("tiny", 2, seed=0)
    path = ws.export_onnx(model, tiny_encoder, tmp_path / "m.onnx", POSITIVE[:2], max_length=8)
    session = ws.onnx_session(path)
    texts = POSITIVE + NEGATIVE[:3]   # another batch size and length than the traced one
    onnx, reference = ws.onnx_logits(session, tiny_encoder, texts, 8), ws.torch_logits(model, tiny_encoder, texts, 8)
    assert onnx.shape == (len(texts), 2) and np.abs(onnx - reference).max() < 1e-4
    small = ws.quantize_onnx_int8(path, tmp_path / "m8.onnx")
    assert small.stat().st_size < path.stat().st_size
    assert ws.onnx_logits(ws.onnx_session(small), tiny_encoder, texts, 8).shape == (len(texts), 2)


def test_predict_maps_logits_to_names_and_refuses_non_strings():
    predict = ws.make_predict(lambda texts: np.array([[0.0, 1.0] if "good" in t else [1.0, 0.0] for t in texts]),
                              ["rotten", "fresh"])
    assert predict(["good", "bad"]) == ["fresh", "rotten"] and predict([]) == []
    with pytest.raises(TypeError, match="list of strings"):
        predict(["good", 3])
    assert ws.median_latency(lambda: sum(range(100)), repeats=3) >= 0


def test_written_folders_read_back_with_the_own_data_loaders(tmp_path):
    from tlutils.core.own_data import load_image_folder, load_text_csv

    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 255, (30, 8, 8), dtype=np.uint8), np.arange(30) % 3
    root = ws.write_image_folder(images, labels, ["a", "b/c", "d"], tmp_path / "imgs", per_class=4, seed=0)
    loaded = load_image_folder(root)
    assert loaded.class_names == ["a", "b-c", "d"] and np.bincount(loaded.labels).tolist() == [4, 4, 4]
    assert loaded.images[0].shape == (8, 8, 3)
    csv = ws.write_text_csv(["one, with a comma", "two"], [1, 0], ["neg", "pos"], tmp_path / "t.csv")
    texts, text_labels, names = load_text_csv(csv)
    assert texts == ["one, with a comma", "two"] and names == ["neg", "pos"] and text_labels.tolist() == [1, 0]


def test_linear_probe_arms_choose_c_on_validation_and_separate_pool_from_test():
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 2
    useful = labels[:, None] * 3.0 + rng.normal(size=(60, 4))
    noise = rng.normal(size=(60, 4))
    pool, test = np.arange(40), np.arange(40, 60)
    arms, score = ws.linear_probe_arms({"noise": noise, "useful": useful}, labels, pool, test, {"train": 10, "val": 5})
    result = compare(arms, seeds=[0, 1, 2], budget=Budget(seconds=60), score_test=score, progress=False)
    summary = result.summary()
    assert summary.loc["useful", "test_mean"] > 0.9 > summary.loc["noise", "test_mean"]
    assert all("C" in choice for choice in result.table["choice"])
    with pytest.raises(ValueError, match="share rows"):
        ws.linear_probe_arms({"x": noise}, labels, pool, np.arange(30, 50), {"train": 10, "val": 5})


def test_timm_features_are_the_pre_logits_of_the_model():
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=5).eval()
    images = torch.randn(3, 3, 32, 32)
    features = ws.timm_pooled_features(model, images, batch_size=2)
    assert features.shape == (3, model.num_features)
    with torch.no_grad():
        assert torch.allclose(model.get_classifier()(features), model(images), atol=1e-5)


def test_the_cli_wrapper_refuses_zero_processes(tmp_path):
    with pytest.raises(ValueError, match="at least 1"):
        ws.run_finetune_cli(tmp_path, nproc=0)
