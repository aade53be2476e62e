"""Causal language models (GPT family): loss on the target only, decoding, perplexity, masks.

:class:`CausalLMDataset` (loss on the target tokens only), :func:`causal_lm_loss`,
:func:`generate_texts` with :func:`top_p_filter`, :func:`perplexity`,
:func:`unfreeze_last_decoder_blocks`, and the attention masks of BERT, GPT and XLNet.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tlutils.core.datasets import PaddingCollator, _padded_loader
from tlutils.core.runtime import check_one_of, get_device, resolve_device, seeded
from tlutils.core.surgery import freeze, unfreeze
from tlutils.core.train import map_batches

#: Label value that cross-entropy ignores (prompt and padding tokens of a causal LM).
IGNORE_INDEX = -100


def headline_prompt(article: str, max_words: int = 40) -> str:
    """The prompt for headline generation: the article's first words (without its headline).

    Args:
        article: Text whose first line is the headline (``load_bbc_news`` texts).
        max_words: Words of the body kept (short inputs keep training fast).
    """
    body = article.split("\n", 1)[1] if "\n" in article else article
    words = body.split()[:max_words]
    return "Article: " + " ".join(words) + "\nHeadline:"


class CausalLMDataset(Dataset):
    """Prompt + target pairs for a causal LM, with the loss on the target tokens only.

    ``input_ids`` = prompt tokens + target tokens + end-of-sequence; ``labels`` are the
    same ids with the prompt replaced by -100 (ignored by the loss), so the model learns
    to write the target, not to copy the prompt. Use :attr:`collate` in the DataLoader.

    Args:
        prompts: Input texts.
        targets: The text that should follow each prompt (a leading space is added).
        tokenizer: The model's tokenizer (needs an end-of-sequence token).
        max_prompt_tokens: Prompts are cut to their first this-many tokens.
        max_target_tokens: Targets are cut to this many tokens.
    """

    def __init__(self, prompts: Sequence[str], targets: Sequence[str], tokenizer: Any,
                 max_prompt_tokens: int = 64, max_target_tokens: int = 24):
        if len(prompts) != len(targets):
            raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no end-of-sequence token")
        prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        target_ids = tokenizer([" " + t.strip() for t in targets], add_special_tokens=False)["input_ids"]
        self.items = []
        for p, t in zip(prompt_ids, target_ids):
            p, t = p[:max_prompt_tokens], t[:max_target_tokens] + [tokenizer.eos_token_id]
            self.items.append({"input_ids": torch.tensor(p + t), "attention_mask": torch.ones(len(p + t), dtype=torch.long),
                               "labels": torch.tensor([IGNORE_INDEX] * len(p) + t)})
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.collate = PaddingCollator({"input_ids": pad, "attention_mask": 0, "labels": IGNORE_INDEX})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.items[index]


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: position t predicts token t + 1; labels of -100 are ignored.

    Args:
        logits: ``batch x tokens x vocabulary``.
        labels: ``batch x tokens`` token ids (-100 where no loss is wanted).
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"expected logits batch x tokens x vocab and labels batch x tokens, "
                         f"got {tuple(logits.shape)} and {tuple(labels.shape)}")
    shifted_logits, shifted_labels = logits[:, :-1], labels[:, 1:]
    return nn.functional.cross_entropy(shifted_logits.reshape(-1, logits.shape[-1]).float(),
                                       shifted_labels.reshape(-1), ignore_index=IGNORE_INDEX)


def lm_loader(dataset: CausalLMDataset, batch_size: int = 4, shuffle: bool = False, seed: int | None = None,
              group_by_length: bool = False) -> DataLoader:
    """A DataLoader over a :class:`CausalLMDataset`, batches ready for ``fit(..., loss_fn=causal_lm_loss)``.

    With ``shuffle`` and ``group_by_length``, batches hold examples of similar length
    (:class:`LengthGroupedBatchSampler`), which cuts the padding.
    """
    return _padded_loader(dataset, [len(item["input_ids"]) for item in dataset.items], batch_size, shuffle, seed,
                          group_by_length)


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probability reaches ``top_p``.

    Args:
        probs: ``... x vocabulary`` probabilities (each row sums to 1).
        top_p: Probability mass to keep, in (0, 1]; 1 keeps everything.

    Returns:
        The probabilities with the tail set to 0 and each row renormalised to 1.

    Example:
        >>> top_p_filter(torch.tensor([0.5, 0.3, 0.15, 0.05]), 0.8)
        tensor([0.6250, 0.3750, 0.0000, 0.0000])
    """
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(-1) - sorted_probs  # probability of the tokens ranked above
    keep_sorted = mass_before < top_p                     # the most likely token is always kept
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    filtered = probs * keep
    return filtered / filtered.sum(-1, keepdim=True)


@torch.no_grad()
def generate_texts(model: nn.Module, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int = 20,
                   strategy: str = "greedy", temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                   batch_size: int = 8, stop_at_newline: bool = False, device: torch.device | None = None) -> list[str]:
    """Continue each prompt with the model's own ``generate``; returns only the new text.

    Args:
        model: A causal LM (``LlamaForCausalLM``, or a peft model around one).
        tokenizer: Its tokenizer.
        prompts: Texts to continue.
        max_new_tokens: Longest continuation.
        strategy: ``"greedy"`` (most likely token each step), ``"temperature"`` (sample from
            the softmax of logits / temperature) or ``"top_p"`` (sample from the nucleus,
            see :func:`top_p_filter`, after the temperature).
        temperature: Used by the sampling strategies; below 1 sharpens, above 1 flattens.
        top_p: Nucleus mass for ``"top_p"``.
        seed: Seeds sampling, so the same call gives the same text.
        batch_size: Prompts generated together (left-padded).
        stop_at_newline: Cut each continuation at its first line break (for one-line outputs).
        device: Defaults to :func:`~tlutils.core.runtime.get_device`.
    """
    check_one_of(strategy, ("greedy", "temperature", "top_p"), "decoding strategy")
    device = device or get_device()
    model.eval().to(device)
    options = {"do_sample": False} if strategy == "greedy" else {
        "do_sample": True, "temperature": temperature, "top_p": top_p if strategy == "top_p" else 1.0, "top_k": 0}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop_ids = [tokenizer.eos_token_id]
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    if stop_at_newline and len(newline) == 1:  # end a sequence as soon as it writes a line break
        stop_ids.append(newline[0])
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    with seeded(seed):  # the same call gives the same text; the caller's random state is left alone
        outputs = []
        try:
            for first in range(0, len(prompts), batch_size):
                batch = tokenizer(list(prompts[first:first + batch_size]), return_tensors="pt", padding=True,
                                  add_special_tokens=False).to(device)
                new = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=stop_ids,
                                     **options)
                outputs += tokenizer.batch_decode(new[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        finally:
            tokenizer.padding_side = side
    return [text.strip().split("\n")[0].strip() if stop_at_newline else text for text in outputs]


@torch.no_grad()
def token_losses(model: nn.Module, tokenizer: Any, text: str, max_length: int = 256,
                 device: torch.device | None = None) -> tuple[list[str], torch.Tensor]:
    """Per-token surprisal: the negative log-probability (nats) the model gave each next token.

    Returns:
        ``(tokens, losses)``: the predicted tokens (all but the first) and their losses.
    """
    device = device or get_device()
    model.eval().to(device)
    ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length,
                    add_special_tokens=False)["input_ids"].to(device)
    if ids.shape[1] < 2:
        raise ValueError("the text needs at least two tokens to measure a prediction")
    logits = model(input_ids=ids).logits.float()
    losses = nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="none").cpu()
    return tokenizer.convert_ids_to_tokens(ids[0, 1:].tolist()), losses


def perplexity(model: nn.Module, tokenizer: Any, texts: Sequence[str], max_length: int = 256,
               device: torch.device | None = None) -> float:
    """Perplexity over texts: exp of the mean next-token loss, pooled over every predicted token.

    A model that guessed uniformly among V tokens would score V; lower is better.
    """
    if not texts:
        raise ValueError("no texts given")
    total, count = 0.0, 0
    for text in texts:
        _, losses = token_losses(model, tokenizer, text, max_length, device)
        total, count = total + float(losses.sum()), count + len(losses)
    return math.exp(total / count)


def shuffle_words(text: str, seed: int = 0) -> str:
    """The same words in a random order: same vocabulary, no grammar (a perplexity control)."""
    words = text.split()
    order = np.random.default_rng(seed).permutation(len(words))
    return " ".join(words[i] for i in order)


@torch.no_grad()
def next_token_probs(model: nn.Module, tokenizer: Any, prompt: str, temperature: float = 1.0,
                     device: torch.device | None = None) -> torch.Tensor:
    """The model's distribution over the next token after ``prompt``, as ``softmax(logits / temperature)``."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    device = device or get_device()
    model.eval().to(device)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)
    return (model(input_ids=ids).logits[0, -1].float() / temperature).softmax(-1).cpu()


def target_loss(model: nn.Module, loader, device: torch.device | None = None) -> float:
    """Mean next-token loss over the labelled (target) tokens of a causal-LM loader, pooled over tokens."""
    device = resolve_device(device)
    model.eval().to(device)

    def batch_loss(inputs: dict, labels: torch.Tensor) -> tuple[float, int]:
        n = int((labels[:, 1:] != IGNORE_INDEX).sum())
        return float(causal_lm_loss(model(**inputs).logits, labels)) * n, n

    totals = map_batches(batch_loss, loader, device)
    count = sum(n for _, n in totals)
    if count == 0:
        raise ValueError("the loader has no labelled tokens")
    return sum(total for total, _ in totals) / count


def unfreeze_last_decoder_blocks(model: nn.Module, k: int) -> nn.Module:
    """Freeze a Llama-style causal LM except its last ``k`` decoder blocks and the final norm.

    The embeddings and the output layer stay frozen: in SmolLM2 they share one matrix
    (tied weights), which alone holds a fifth of the parameters.
    """
    layers = model.model.layers
    if not 1 <= k <= len(layers):
        raise ValueError(f"k must be between 1 and {len(layers)} (the number of decoder blocks), got {k}")
    freeze(model)
    return unfreeze(model, [f"model.layers.{i}" for i in range(len(layers) - k, len(layers))] + ["model.norm"])


def bidirectional_mask(n: int) -> torch.Tensor:
    """BERT / RoBERTa: every token may attend to every token (``n x n`` of True)."""
    return torch.ones(n, n, dtype=torch.bool)


def causal_mask(n: int) -> torch.Tensor:
    """GPT / Llama: token i may attend to tokens 0..i only (lower triangle)."""
    return torch.ones(n, n, dtype=torch.bool).tril()


def permutation_mask(order: Sequence[int], content_stream: bool = False) -> torch.Tensor:
    """XLNet's permutation language modelling: who may attend to whom for one factorisation order.

    XLNet predicts the tokens in the order ``order`` (a permutation of positions); the
    token at position i may use the tokens that come *before* it in that order, wherever
    they sit in the text. The query stream (which predicts i) must not see token i itself;
    the content stream (which feeds later predictions) may.

    Args:
        order: A permutation of ``range(n)``: ``order[k]`` is the position predicted k-th.
        content_stream: Include the diagonal (a token sees its own content).

    Returns:
        ``n x n`` booleans, True where row i may attend to column j. XLNet's own
        ``perm_mask`` argument is the opposite: 1 where attention is *forbidden*.
    """
    order = [int(i) for i in order]
    n = len(order)
    if sorted(order) != list(range(n)):
        raise ValueError(f"order must be a permutation of 0..{n - 1}, got {order}")
    rank = torch.empty(n, dtype=torch.long)
    rank[torch.tensor(order)] = torch.arange(n)
    allowed = rank[None, :] < rank[:, None]
    return allowed | torch.eye(n, dtype=torch.bool) if content_stream else allowed


#: The instruction of the in-context baselines (zero-shot and few-shot) for headline writing.
HEADLINE_INSTRUCTION = "Write a short news headline (about five words) for this article. Answer with the headline only."


def chat_headline_prompt(tokenizer: Any, article_prompt: str, examples: Sequence[tuple[str, str]] = (),
                         instruction: str = HEADLINE_INSTRUCTION) -> str:
    """A headline request in the model's own chat format, optionally with worked examples (few-shot).

    Instruct models are trained on conversations wrapped in special tokens
    (``<|im_start|>user ... <|im_end|>`` for SmolLM2); ``tokenizer.apply_chat_template``
    writes that wrapping, so the model sees a request in the form it was tuned on.

    Args:
        tokenizer: A tokenizer with a chat template.
        article_prompt: A :func:`headline_prompt` text (``"Article: ...\\nHeadline:"``).
        examples: ``(article_prompt, headline)`` pairs shown first as earlier turns of the
            conversation: k pairs make a k-shot prompt, none a zero-shot one.
        instruction: The request that precedes every article.

    Returns:
        The prompt text, ending where the assistant's answer starts.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this tokenizer has no chat template; use the plain headline_prompt instead")

    def request(prompt: str) -> dict:
        article = prompt.strip().removesuffix("Headline:").strip()
        return {"role": "user", "content": f"{instruction}\n{article}"}

    messages = []
    for prompt, headline in examples:
        messages += [request(prompt), {"role": "assistant", "content": headline.strip()}]
    messages.append(request(article_prompt))
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def headline_rouge(model: nn.Module, tokenizer: Any, prompts: Sequence[str], references: Sequence[str],
                   max_new_tokens: int = 12, batch_size: int = 8, device: torch.device | None = None) -> tuple[list[float], list[str]]:
    """Greedy one-line generations and their ROUGE-L F1 against reference headlines, per example.

    Args:
        model: A causal LM.
        tokenizer: Its tokenizer.
        prompts: One prompt per example (plain or chat format).
        references: The real headlines.
        max_new_tokens: Longest generation.
        batch_size: Prompts generated together.
        device: Defaults to :func:`~tlutils.core.runtime.get_device`.

    Returns:
        ``(scores, outputs)``: the per-example ROUGE-L F1 (mean = the usual corpus score) and the texts.
    """
    from tlutils.core.metrics import rouge_l

    if len(prompts) != len(references):
        raise ValueError(f"{len(prompts)} prompts but {len(references)} references")
    outputs = generate_texts(model, tokenizer, prompts, max_new_tokens=max_new_tokens, stop_at_newline=True,
                             batch_size=batch_size, device=device)
    return [float(rouge_l(o, r)) for o, r in zip(outputs, references)], outputs


def causal_lm_arm(base_model: nn.Module, make_trainable, lrs: Sequence[float], train_set: CausalLMDataset,
                  val_set: CausalLMDataset, *, batch_size: int = 4, epochs: int = 2, name: str = "arm",
                  chosen: dict | None = None, keep: dict | None = None, keep_seeds: Sequence[int] | None = None,
                  verbose: bool = True,
                  device: torch.device | None = None):
    """A fine-tuning arm for :func:`tlutils.core.compare.compare`: the learning rate chosen on validation loss.

    Each run trains ``make_trainable(copy of base_model)`` with :func:`~tlutils.core.train.fit` and
    :func:`causal_lm_loss` on ``train_set`` (batches in the trial's seed order) and scores the
    target loss on ``val_set``; :func:`~tlutils.core.compare.best_on_validation` keeps the lowest.

    Args:
        base_model: The pre-trained causal LM (copied, never changed).
        make_trainable: ``model -> model`` that sets what trains (LoRA, last blocks, ...).
        lrs: The learning rates to try.
        train_set: Training pairs.
        val_set: Validation pairs (never the test articles).
        batch_size: Examples per step.
        epochs: Passes over ``train_set`` per run.
        name: The arm's name (key in ``chosen`` and ``keep``, label of the printed lines).
        chosen: If a dict, the rate chosen at the first seed is stored under ``name`` and later
            seeds train at that rate only (one search instead of one per seed).
        keep: If a dict, the trained model of every seed is stored under ``(name, seed)``.
        keep_seeds: Only keep the models of these seeds (``None``: all); a model is large.
        verbose: Print one line per training run.
        device: Defaults to :func:`~tlutils.core.runtime.get_device`.

    Returns:
        ``arm(trial) -> Outcome`` with ``choice = {"lr": ..., "val_loss": ...}``.
    """
    import copy

    from tlutils.core.compare import Outcome, best_on_validation
    from tlutils.core.surgery import trainable_parameter_count
    from tlutils.core.train import fit

    def arm(trial):
        def run(lr):
            model = make_trainable(copy.deepcopy(base_model))
            loader = lm_loader(train_set, batch_size=batch_size, shuffle=True, seed=trial.seed, group_by_length=True)
            history = fit(model, loader, epochs=epochs, lr=lr, loss_fn=causal_lm_loss, scheduler="linear",
                          seed=trial.seed, device=device, progress=False)
            val_loss = target_loss(model, lm_loader(val_set, batch_size=batch_size), device)
            if verbose:
                print(f"seed {trial.seed}, {name}, lr {lr:g}: {history.steps} steps in {history.seconds:.0f} s, "
                      f"validation loss {val_loss:.3f}", flush=True)
            return Outcome(model, val=-val_loss, steps=history.steps, trainable_params=trainable_parameter_count(model),
                           choice={"val_loss": round(val_loss, 4)})

        options = [chosen[name]] if chosen is not None and name in chosen else list(lrs)
        outcome = best_on_validation(options, run, name="lr")
        if chosen is not None:
            chosen.setdefault(name, outcome.choice["lr"])
        if keep is not None and (keep_seeds is None or trial.seed in keep_seeds):
            keep[name, trial.seed] = outcome.predictor
        return outcome

    return arm
