"""The course in the standard stack: Trainer + datasets, the finetune CLI, LoRA SFT, ONNX export and your own folders.

Notebook 14 calls these helpers. Each one puts a piece of the course next to the tool a team
uses at work, with the same data and settings, so the two can be measured against each other:

- :func:`trainer_arms`: notebook 07's sentiment fine-tune with ``transformers.Trainer`` on a
  ``datasets.Dataset`` and with :func:`~tlutils.core.train.fit`, as two arms of
  :func:`~tlutils.core.compare.compare`;
- :func:`run_finetune_cli`: ``python -m tlutils finetune`` on one or more processes (``torchrun``);
- :func:`instruction_sets`, :func:`sft_dataset`, :func:`exact_match`: instruction tuning (SFT) of a
  chat model with the loss on the answer only;
- :func:`export_onnx`, :func:`onnx_logits`, :func:`median_latency`, :func:`make_predict`: export and serving;
- :func:`write_image_folder`, :func:`write_text_csv`: a small folder of real data in the layout
  of :mod:`tlutils.core.own_data`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from tlutils.core.runtime import seeded
from tlutils.topics.text import EncoderClassifier

#: The tlutils call and what does the same job in the Hugging Face / PyTorch stack.
STACK_TABLE = (
    ("fit(model, train_loader, ...)", "Trainer(model, args, train_dataset=...).train()"),
    ("fit(..., lr=, max_steps=, scheduler='linear', max_grad_norm=)",
     "TrainingArguments(learning_rate=, max_steps=, lr_scheduler_type='linear', max_grad_norm=)"),
    ("evaluate(model, val_loader)", "Trainer.evaluate(eval_dataset) with compute_metrics"),
    ("text_loader(texts, labels, tokenizer)", "Dataset.from_dict(...).map(tokenize) + DataCollatorWithPadding"),
    ("load_text_encoder('minilm_l3') + EncoderClassifier",
     "AutoModelForSequenceClassification.from_pretrained(name, num_labels=2)"),
    ("compare(arms, seeds=[0, 1, 2], budget=...)", "a sweep (Trainer.hyperparameter_search, W&B / MLflow runs) "
     "over seeds, summarised by hand: no library does the paired-seed protocol for you"),
    ("save_checkpoint(model, 'model.safetensors')", "model.save_pretrained(folder) (safetensors) + model card README.md"),
    ("add_lora(model, r=8)", "peft.get_peft_model(model, LoraConfig(r=8, ...))"),
    ("CausalLMDataset (loss on the answer only)", "trl SFTTrainer with completion-only loss, or labels = -100 on the prompt"),
    ("python -m tlutils finetune + torchrun", "accelerate launch / torchrun train.py (Trainer is DDP-aware)"),
    ("quantize_dynamic_int8(model)", "torch.ao dynamic quantisation, onnxruntime.quantization.quantize_dynamic, Optimum"),
    ("load_efficientnet_lite0()", "timm.create_model('tf_efficientnet_lite0', pretrained=True)"),
)


class LossReturningClassifier(nn.Module):
    """An :class:`~tlutils.topics.text.EncoderClassifier` in the form ``Trainer`` expects.

    ``Trainer`` calls ``model(**batch)`` and reads the loss from the output when the batch has
    ``labels``; the course's models return logits only, so this wrapper adds the cross-entropy.

    Args:
        classifier: The model to wrap (trained in place).
    """

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None):
        logits = self.classifier(input_ids=input_ids, attention_mask=attention_mask)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


def hf_text_dataset(texts: Sequence[str], labels: Sequence[int], tokenizer: Any, max_length: int = 64):
    """A ``datasets.Dataset`` of tokenised texts: the standard-stack twin of ``text_loader``.

    Args:
        texts: The texts.
        labels: One integer label per text.
        tokenizer: A Hugging Face tokenizer.
        max_length: Longer texts are truncated (padding is left to ``DataCollatorWithPadding``).

    Returns:
        A ``datasets.Dataset`` with ``input_ids``, ``attention_mask`` and ``label`` columns.
    """
    from datasets import Dataset

    data = Dataset.from_dict({"text": list(texts), "label": [int(y) for y in labels]})
    tokenize = lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_length)  # noqa: E731
    return data.map(tokenize, batched=True, remove_columns=["text"])


def accuracy_metric(eval_pred) -> dict:
    """``compute_metrics`` for ``Trainer``: accuracy from ``(logits, labels)``, with numpy only."""
    logits, labels = eval_pred
    return {"accuracy": float(np.mean(np.argmax(logits, axis=-1) == labels))}


def _new_classifier(encoder_name: str, num_classes: int, seed: int):
    from tlutils.core.models import load_text_encoder

    tokenizer, encoder = load_text_encoder(encoder_name)
    encoder.pooler = None   # mean pooling never uses it (and it is not in the offline weights)
    with seeded(seed):   # the same new head for both arms of a seed
        model = EncoderClassifier(encoder, num_classes, pooling="mean")
    return tokenizer, model.train()


def train_with_trainer(model: nn.Module, tokenizer: Any, train_set, *, steps: int, batch_size: int, lr: float,
                       seed: int, output_dir: str | Path, trainer_class=None):
    """Fine-tune with ``transformers.Trainer`` under the same settings as the tlutils arm.

    AdamW at ``lr`` without weight decay, a linear decay to 0 without warm-up, gradient norm
    clipped at 1, ``steps`` optimizer steps of ``batch_size`` examples, on the CPU unless a GPU
    is there. Nothing is saved or logged to a service.

    Args:
        model: An :class:`~tlutils.topics.text.EncoderClassifier` (trained in place).
        tokenizer: Its tokenizer (for ``DataCollatorWithPadding``).
        train_set: A :func:`hf_text_dataset`.
        steps: Optimizer steps.
        batch_size: Examples per step.
        lr: Peak learning rate.
        seed: Seeds Trainer's shuffling and dropout.
        output_dir: Trainer's working folder (nothing is written there with these settings).
        trainer_class: A ``Trainer`` subclass to use instead (e.g. one that keeps the data order);
            the loss of every step is then kept in ``trainer.state.log_history``.

    Returns:
        The ``Trainer`` (``trainer.evaluate(dataset)`` scores a split).
    """
    from transformers import DataCollatorWithPadding, PrinterCallback, Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=batch_size,
                             per_device_eval_batch_size=64, learning_rate=lr, weight_decay=0.0,
                             lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0, optim="adamw_torch",
                             seed=seed, data_seed=seed, save_strategy="no", eval_strategy="no",
                             logging_strategy="no" if trainer_class is None else "steps", logging_steps=1,
                             report_to="none", disable_tqdm=True,
                             use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0)
    trainer = (trainer_class or Trainer)(model=LossReturningClassifier(model), args=args, train_dataset=train_set,
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=accuracy_metric)
    trainer.remove_callback(PrinterCallback)   # no raw log dicts in the output
    trainer.train()
    return trainer


def in_order_check(encoder_name: str, texts: Sequence[str], labels: Sequence[int], *, steps: int, batch_size: int,
                   lr: float, max_length: int, seed: int, work_dir: str | Path) -> dict:
    """Train the same classifier with ``Trainer`` and with ``fit`` on the same batches in the same order, dropout off.

    With the randomness of both libraries removed (no shuffling, no dropout, the same new
    head), two implementations of one recipe must compute the same steps: the per-step
    losses and the final weights agree up to float rounding.

    Args:
        encoder_name: Asset name of the encoder.
        texts, labels: The training examples, taken in this order.
        steps, batch_size, lr, max_length: The recipe.
        seed: Seeds the new head.
        work_dir: Scratch folder for Trainer.

    Returns:
        ``{"trainer_losses", "fit_losses", "max_loss_difference", "max_weight_difference"}``.
    """
    from torch.utils.data import SequentialSampler
    from transformers import Trainer

    from tlutils.core.datasets import text_loader
    from tlutils.core.train import classification_step, fit

    class InOrderTrainer(Trainer):
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    models = []
    for _ in range(2):
        tokenizer, model = _new_classifier(encoder_name, len(set(int(y) for y in labels)), seed)
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
        models.append(model)
    trainer = train_with_trainer(models[0], tokenizer, hf_text_dataset(texts, labels, tokenizer, max_length), steps=steps,
                                 batch_size=batch_size, lr=lr, seed=seed, output_dir=Path(work_dir) / "in_order",
                                 trainer_class=InOrderTrainer)
    trainer_losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    fit_losses, plain_step = [], classification_step()

    def logged_step(model, batch, device):
        loss = plain_step(model, batch, device)
        fit_losses.append(float(loss.total.detach()))
        return loss
    loader = text_loader(texts, labels, tokenizer, max_length, batch_size, shuffle=False)
    fit(models[1], loader, epochs=-(-steps // len(loader)), max_steps=steps, lr=lr, weight_decay=0.0, scheduler="linear",
        max_grad_norm=1.0, step=logged_step, seed=seed, progress=False)
    with torch.no_grad():
        weights = max(float((a - b).abs().max()) for a, b in zip(models[0].parameters(), models[1].parameters()))
    return {"trainer_losses": trainer_losses, "fit_losses": fit_losses, "max_weight_difference": weights,
            "max_loss_difference": float(np.max(np.abs(np.subtract(trainer_losses, fit_losses))))}


def trainer_arms(pool: tuple[Sequence[str], Sequence[int]], test: tuple[Sequence[str], Sequence[int]], *,
                 sizes: dict[str, int], encoder_name: str, num_classes: int, steps: int, batch_size: int,
                 lr: float, max_length: int, work_dir: str | Path, models: dict | None = None,
                 verbose: bool = True):
    """The same fine-tune in the standard stack and in tlutils, as arms for :func:`~tlutils.core.compare.compare`.

    Per seed both arms draw the same training and validation split from ``pool``, start from
    the same pre-trained encoder and the same new head, and train ``steps`` steps with the
    same optimizer, schedule and clipping. What differs is only each library's own batch
    order and dropout masks, which is the noise the comparison measures.

    Args:
        pool: ``(texts, labels)`` from which each seed draws its split.
        test: ``(texts, labels)``, scored by the protocol only.
        sizes: ``{"train": per class, "val": per class}``.
        encoder_name: Asset name of the encoder (e.g. ``"minilm_l3"``).
        num_classes: Number of classes.
        steps, batch_size, lr, max_length: The shared recipe.
        work_dir: Scratch folder for Trainer.
        models: If a dict, every run is stored under ``(arm, seed)`` as ``{"model", "tokenizer", "val"
            (texts, labels), "val_accuracy", "final_train_loss"}``.
        verbose: One line per run.

    Returns:
        ``(arms, score_test)``: the two arms and the test scorer (accuracy).
    """
    from tlutils.core.compare import Outcome
    from tlutils.core.datasets import text_loader
    from tlutils.core.surgery import trainable_parameter_count
    from tlutils.core.train import evaluate, fit, predict
    from tlutils.topics.text import per_class_split

    texts, labels = list(pool[0]), np.asarray(pool[1])
    test_texts, test_labels = list(test[0]), np.asarray(test[1])

    def split(seed):
        parts = per_class_split(labels, sizes, seed=seed)
        return {name: ([texts[i] for i in idx], labels[idx]) for name, idx in parts.items()}

    def finish(name, seed, model, tokenizer, val_accuracy, seconds, val_data, train_loss):
        if models is not None:
            models[name, seed] = {"model": model, "tokenizer": tokenizer, "val": val_data,
                                  "val_accuracy": val_accuracy, "final_train_loss": train_loss}
        if verbose:
            print(f"seed {seed}, {name}: validation accuracy {val_accuracy:.3f}, {seconds:.0f} s", flush=True)
        loader = text_loader(test_texts, test_labels, tokenizer, max_length, 64)
        predictor = lambda: predict(model, loader)[0].argmax(-1).numpy()  # noqa: E731
        return Outcome(predictor, val=val_accuracy, steps=steps, trainable_params=trainable_parameter_count(model))

    def trainer_arm(trial):
        data = split(trial.seed)
        tokenizer, model = _new_classifier(encoder_name, num_classes, trial.seed)
        start = time.perf_counter()
        trainer = train_with_trainer(model, tokenizer, hf_text_dataset(*data["train"], tokenizer, max_length),
                                     steps=steps, batch_size=batch_size, lr=lr, seed=trial.seed,
                                     output_dir=Path(work_dir) / f"trainer_{trial.seed}")
        seconds = time.perf_counter() - start
        val = trainer.evaluate(hf_text_dataset(*data["val"], tokenizer, max_length))["eval_accuracy"]
        return finish("Trainer + datasets", trial.seed, model.eval(), tokenizer, float(val), seconds, data["val"],
                      float(trainer.state.log_history[-1].get("train_loss", float("nan"))))

    def tlutils_arm(trial):
        data = split(trial.seed)
        tokenizer, model = _new_classifier(encoder_name, num_classes, trial.seed)
        loader = text_loader(*data["train"], tokenizer, max_length, batch_size, shuffle=True, seed=trial.seed)
        history = fit(model, loader, epochs=-(-steps // len(loader)), max_steps=steps, lr=lr, weight_decay=0.0,
                      scheduler="linear", max_grad_norm=1.0, seed=trial.seed, progress=False)
        val = evaluate(model, text_loader(*data["val"], tokenizer, max_length, 64))["accuracy"]
        return finish("tlutils fit", trial.seed, model.eval(), tokenizer, float(val), history.seconds, data["val"],
                      float(history.train_loss[-1]))

    score = lambda outcome: float(np.mean(outcome.predictor() == test_labels))  # noqa: E731
    return {"Trainer + datasets": trainer_arm, "tlutils fit": tlutils_arm}, score


def run_finetune_cli(out: str | Path, nproc: int = 1, options: Sequence[str] = (), timeout: float = 600) -> dict:
    """Run ``python -m tlutils finetune`` on ``nproc`` CPU processes and return its ``metrics.json``.

    One process runs the module directly; several run it under ``torchrun --nproc_per_node``
    (``torch.distributed.run``, the same launcher) on the CPU's gloo backend.

    Args:
        out: The run's output folder (metrics, weights, model card).
        nproc: Number of processes.
        options: Further command-line options, e.g. ``["--max-steps", "4", "--dropout", "0"]``.
        timeout: Seconds before the run is stopped.

    Returns:
        The metrics dict the command wrote, plus ``"command"`` (the line that ran) and
        ``"wall_seconds"`` (start-up included).

    Raises:
        RuntimeError: The command failed; the message holds the end of its output.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be at least 1, got {nproc}")
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
                 str(29500 + os.getpid() % 1000)] if nproc > 1 else [sys.executable])
    command = [*launcher, "-m", "tlutils", "finetune", "--device", "cpu", "--out", str(out), *map(str, options)]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-2000:]}")
    metrics = json.loads((Path(out) / "metrics.json").read_text())
    shown = ["torchrun", "--nproc_per_node", str(nproc)] if nproc > 1 else ["python"]
    return {**metrics, "command": " ".join([*shown, "-m", "tlutils", "finetune", "--device", "cpu", "--out", str(out),
                                            *map(str, options)]), "wall_seconds": time.perf_counter() - start}


#: The two instruction tasks of the SFT section: the request, and the answers allowed.
SENTIMENT_REQUEST = "Is this movie review positive or negative? Answer with one word.\nReview: {text}"
TOPIC_REQUEST = "Which topic is this news headline about: {choices}? Answer with one word.\nHeadline: {text}"


def instruction_sets(reviews, news, per_task: dict[str, int], seed: int, max_words: int = 30) -> dict[str, list[dict]]:
    """Instruction/answer pairs from real offline data, split into named parts.

    Two tasks, mixed half and half: the sentiment of a Rotten Tomatoes snippet (``positive`` /
    ``negative``) and the topic of a BBC News headline (its folder name). Every part has
    ``per_task[part]`` examples of each task, balanced over the classes where they divide
    evenly, and no text appears in two parts.

    Args:
        reviews: ``TextData`` of Rotten Tomatoes (label 0 rotten, 1 fresh).
        news: ``NewsData`` of BBC News (``headlines``, ``labels``, ``class_names``).
        per_task: Part name -> examples per task, e.g. ``{"train": 32, "val": 8, "test": 24}``.
        seed: Seeds the draw.
        max_words: Reviews are cut to their first this-many words.

    Returns:
        Part name -> list of ``{"task", "request", "answer"}`` dicts, shuffled.
    """
    from tlutils.topics.text import per_class_split

    rng = np.random.default_rng(seed)
    sentiment = {0: "negative", 1: "positive"}

    def draw(labels, n_classes):
        sizes = {part: max(1, -(-n // n_classes)) for part, n in per_task.items()}
        parts = per_class_split(labels, sizes, seed=seed)
        return {part: idx[:per_task[part]] for part, idx in parts.items()}

    review_parts, news_parts = draw(reviews.labels, 2), draw(news.labels, len(news.class_names))
    choices = ", ".join(news.class_names[:-1]) + " or " + news.class_names[-1]
    out = {}
    for part in per_task:
        rows = [{"task": "sentiment", "answer": sentiment[int(reviews.labels[i])],
                 "request": SENTIMENT_REQUEST.format(text=" ".join(reviews.texts[i].split()[:max_words]))}
                for i in review_parts[part]]
        rows += [{"task": "topic", "answer": news.class_names[int(news.labels[i])],
                  "request": TOPIC_REQUEST.format(choices=choices, text=news.headlines[i])} for i in news_parts[part]]
        out[part] = [rows[i] for i in rng.permutation(len(rows))]
    return out


def chat_prompt(tokenizer: Any, request: str, examples: Sequence[dict] = (), system: str | None = None) -> str:
    """A request in the model's chat template, ending where the assistant's answer starts.

    Args:
        tokenizer: A tokenizer with a chat template.
        request: The user's message.
        examples: Earlier ``{"request", "answer"}`` turns (k of them make a k-shot prompt).
        system: A system message; ``None`` keeps the template's own default.
    """
    messages = [{"role": "system", "content": system}] if system else []
    for example in examples:
        messages += [{"role": "user", "content": example["request"]}, {"role": "assistant", "content": example["answer"]}]
    messages.append({"role": "user", "content": request})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def sft_dataset(tokenizer: Any, rows: Sequence[dict], system: str | None = None, max_prompt_tokens: int = 128):
    """Supervised fine-tuning pairs: chat-formatted request -> answer, the loss on the answer only.

    The prompt (system, user turn and the assistant header) gets label -100, so the loss
    counts the answer tokens and the end-of-turn token only: the model learns to answer,
    not to rewrite requests. Built on :class:`~tlutils.topics.language_models.CausalLMDataset`.

    Args:
        tokenizer: The chat model's tokenizer (its end-of-sequence token closes the answer).
        rows: ``{"request", "answer"}`` dicts.
        system: The system message of :func:`chat_prompt`.
        max_prompt_tokens: Longer prompts are cut (keep it above the longest prompt).
    """
    from tlutils.topics.language_models import CausalLMDataset

    prompts = [chat_prompt(tokenizer, row["request"], system=system) for row in rows]
    return CausalLMDataset(prompts, [row["answer"] for row in rows], tokenizer, max_prompt_tokens=max_prompt_tokens,
                           max_target_tokens=8)


def normalise_answer(text: str) -> str:
    """The first word of a generated answer, lower case, without punctuation (for exact match)."""
    words = "".join(c if c.isalnum() or c.isspace() else " " for c in text.lower()).split()
    return words[0] if words else ""


def exact_match(model: nn.Module, tokenizer: Any, prompts: Sequence[str], answers: Sequence[str],
                max_new_tokens: int = 4, batch_size: int = 16) -> tuple[np.ndarray, list[str]]:
    """Greedy answers and whether each one is exactly the expected word (after :func:`normalise_answer`).

    Returns:
        ``(correct, outputs)``: a 0/1 array per example (its mean is the exact-match rate; two
        arrays give a paired gap) and the generated texts.
    """
    from tlutils.topics.language_models import generate_texts

    outputs = generate_texts(model, tokenizer, list(prompts), max_new_tokens=max_new_tokens, batch_size=batch_size,
                             stop_at_newline=True)
    correct = np.array([normalise_answer(o) == a for o, a in zip(outputs, answers)], dtype=float)
    return correct, outputs


class LogitsOnly(nn.Module):
    """``model(input_ids, attention_mask) -> logits`` with positional inputs, the form ONNX export traces."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask)


def export_onnx(model: nn.Module, tokenizer: Any, path: str | Path, example_texts: Sequence[str],
                max_length: int = 64) -> Path:
    """Export a text classifier to ONNX with dynamic batch and sequence axes.

    Uses the TorchScript-based exporter (``dynamo=False``), which needs no extra package.

    Args:
        model: A classifier ``model(input_ids=..., attention_mask=...) -> logits``.
        tokenizer: Its tokenizer (for the example inputs that the export traces).
        path: The ``.onnx`` file to write.
        example_texts: A few texts for tracing.
        max_length: Truncation of the example inputs.

    Returns:
        The path written.
    """
    import warnings

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = tokenizer(list(example_texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}, "logits": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(LogitsOnly(model.eval()), (batch["input_ids"], batch["attention_mask"]), str(path),
                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    return path


def onnx_session(path: str | Path):
    """An onnxruntime CPU inference session for ``path`` (one intra-op thread, as the course measures)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "1") or 1)
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits(session, tokenizer: Any, texts: Sequence[str], max_length: int = 64) -> np.ndarray:
    """Logits of an exported classifier for ``texts`` (tokenised and padded as one batch)."""
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="np")
    feeds = {"input_ids": batch["input_ids"].astype(np.int64), "attention_mask": batch["attention_mask"].astype(np.int64)}
    return session.run(["logits"], feeds)[0]


def torch_logits(model: nn.Module, tokenizer: Any, texts: Sequence[str], max_length: int = 64) -> np.ndarray:
    """The same as :func:`onnx_logits` with the torch model (the reference for the export check)."""
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        return model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).numpy()


def median_latency(function: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``function()`` over ``repeats`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def make_predict(logits_of: Callable[[Sequence[str]], np.ndarray], class_names: Sequence[str]):
    """The function a service calls: ``predict(texts) -> labels``.

    Args:
        logits_of: ``texts -> logits`` (e.g. ``lambda t: onnx_logits(session, tokenizer, t)``).
        class_names: Label names in class order.

    Returns:
        ``predict(texts: list[str]) -> list[str]``; an empty list gives an empty list, a
        non-string raises ``TypeError``.
    """
    names = list(class_names)

    def predict(texts: Sequence[str]) -> list[str]:
        texts = list(texts)
        if not texts:
            return []
        bad = [t for t in texts if not isinstance(t, str)]
        if bad:
            raise TypeError(f"predict takes a list of strings; got {type(bad[0]).__name__} {bad[0]!r}")
        return [names[i] for i in np.asarray(logits_of(texts)).argmax(-1)]

    return predict


def write_image_folder(images: np.ndarray, labels: Sequence[int], class_names: Sequence[str], root: str | Path,
                       per_class: int, seed: int = 0) -> Path:
    """Write ``per_class`` images of every class as PNGs into ``root/<class>/<n>.png``.

    The layout :func:`~tlutils.core.own_data.load_image_folder` reads (and torchvision's ``ImageFolder``).

    Args:
        images: ``N x H x W`` (grey) or ``N x H x W x 3`` ``uint8`` images.
        labels: Their integer labels.
        class_names: Folder names, in label order.
        root: The folder to fill (created).
        per_class: Images written per class (drawn at random with ``seed``).
        seed: Seeds the draw.
    """
    from PIL import Image

    from tlutils.core.datasets import balanced_subset

    root = Path(root)
    labels = np.asarray(labels)
    for i in balanced_subset(labels, per_class, seed=seed):
        folder = root / str(class_names[int(labels[i])]).replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(images[i], dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def write_text_csv(texts: Sequence[str], labels: Sequence[int], class_names: Sequence[str], path: str | Path) -> Path:
    """Write texts and their label names as a CSV with ``text`` and ``label`` columns (UTF-8, header row)."""
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"text": list(texts), "label": [class_names[int(y)] for y in labels]}).to_csv(path, index=False)
    return path


def quantize_onnx_int8(source: str | Path, target: str | Path) -> Path:
    """onnxruntime's dynamic int8 quantisation of an exported model: int8 weights, activation scales at run time.

    Args:
        source: The float32 ``.onnx`` file.
        target: Where to write the int8 model.
    """
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR   # it logs a pre-processing tip through the root logger
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    return Path(target)


@torch.no_grad()
def timm_pooled_features(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Pooled features of a timm image model, the timm way: ``forward_head(forward_features(x), pre_logits=True)``.

    Args:
        model: A timm model (e.g. :func:`~tlutils.core.models.load_efficientnet_lite0`).
        images: A normalised ``N x 3 x H x W`` batch (:func:`~tlutils.core.datasets.images_to_tensor`).
        batch_size: Images per forward pass.

    Returns:
        ``N x model.num_features`` features.
    """
    model.eval()
    return torch.cat([model.forward_head(model.forward_features(images[i:i + batch_size]), pre_logits=True)
                      for i in range(0, len(images), batch_size)])


def linear_probe_arms(inputs: dict[str, np.ndarray], labels: Sequence[int], pool: np.ndarray, test: np.ndarray,
                      sizes: dict[str, int], cs: Sequence[float] = (0.1, 1.0, 10.0)):
    """Logistic-regression arms, one per input representation, for :func:`~tlutils.core.compare.compare`.

    Each seed draws its own training and validation examples from ``pool`` (``sizes`` per
    class); C is chosen on that validation split; the protocol scores ``test`` once.

    Args:
        inputs: Arm name -> ``N x D`` array (e.g. raw pixels, frozen features), rows aligned with ``labels``.
        labels: One integer label per row.
        pool: Row indices the seeds draw train and validation from.
        test: Row indices of the test split (never in ``pool``).
        sizes: ``{"train": per class, "val": per class}``.
        cs: Inverse regularisation strengths to choose from.

    Returns:
        ``(arms, score_test)``.
    """
    from tlutils.core.compare import Outcome, best_on_validation
    from tlutils.core.features import fit_linear_probe, standardize
    from tlutils.topics.text import per_class_split

    labels = np.asarray(labels)
    if set(pool) & set(test):
        raise ValueError("the pool and the test split share rows")

    def make_arm(x):
        def arm(trial):
            parts = per_class_split(labels[pool], sizes, seed=trial.seed)
            train, val = pool[parts["train"]], pool[parts["val"]]
            scaled = lambda rows: standardize(x[rows], x[train])  # noqa: E731 (training statistics only)

            def run(C):
                probe = fit_linear_probe(scaled(train), labels[train], C=C)
                return Outcome(probe, val=float(probe.score(scaled(val), labels[val])), steps=0,
                               trainable_params=int(probe.coef_.size + probe.intercept_.size))
            out = best_on_validation(cs, run, name="C")
            probe = out.predictor
            return Outcome(lambda: probe.predict(scaled(test)), out.val, out.steps, out.trainable_params, out.choice)
        return arm

    score = lambda outcome: float(np.mean(outcome.predictor() == labels[test]))  # noqa: E731
    return {name: make_arm(np.asarray(x, dtype=np.float64)) for name, x in inputs.items()}, score
