"""Catastrophic forgetting, measured and held back: agreement with the original model, EWC and LwF.

* :func:`top1_agreement` measures what a fine-tuned model still knows of its source task: the share
  of inputs on which it predicts what the original model predicted.
* :func:`fisher_diagonal` and :func:`ewc_penalty` give elastic weight consolidation (Kirkpatrick et
  al., 2017): each weight is pulled back to its old value in proportion to how much the old task's
  predictions depend on it.
* :func:`distillation_loss` and :func:`lwf_step` give Learning without Forgetting (Li and Hoiem,
  2016): the source head keeps reproducing its recorded outputs on the *target* inputs.
* :func:`penalty_step` adds any penalty (EWC, L2-SP) to the default cross-entropy step.
* :class:`LowerDecoder` and :class:`UpperDecoder` split a Llama causal LM (SmolLM2) at a decoder layer,
  so the lower part runs once (cached) and only the last blocks train; :func:`window_log_likelihood`
  scores text through them (perplexity = ``exp(-value)``), :func:`lora_upper` puts LoRA on the last blocks.
* :func:`replay_step` rehearses a few stored examples of an old task while a new one is learnt.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from tlutils.core.runtime import resolve_device
from tlutils.core.train import Loss, Step, call_model, map_batches, unpack_batch


def top1_agreement(logits: torch.Tensor, reference_logits: torch.Tensor) -> float:
    """Share of rows whose arg-max class equals the reference's (1.0: nothing forgotten).

    Raises:
        ValueError: the two tensors differ in shape.
    """
    if logits.shape != reference_logits.shape or logits.dim() != 2:
        raise ValueError(f"expected two N x C logit tensors of one shape, got {tuple(logits.shape)} and "
                         f"{tuple(reference_logits.shape)}")
    return float((logits.argmax(-1) == reference_logits.argmax(-1)).float().mean())


def _check_strength(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")


def fisher_diagonal(model: Callable, loader, parameters: dict[str, nn.Parameter],
                    device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """The diagonal of the Fisher information of a classifier's own predictions, example by example.

    For each input, the label is *sampled* from the model's predicted distribution (the true Fisher,
    not the empirical one, so no labels are needed) and the squared gradient of its log-likelihood is
    averaged over all inputs.

    Args:
        model: Maps an input batch to source logits, e.g. ``lambda x: net(x, "source")``.
        loader: Yields ``(inputs, anything)`` batches of source-like inputs (the second part is ignored).
        parameters: ``{name: parameter}`` whose Fisher values are wanted (usually the trainable body).
        device: Where to run.

    Returns:
        ``{name: tensor}`` of the parameters' shapes, ``>= 0``.
    """
    if not parameters:
        raise ValueError("parameters is empty: pass {name: parameter} of the weights EWC should protect")
    device = resolve_device(device)
    totals = {name: torch.zeros_like(param) for name, param in parameters.items()}
    count, generator = 0, torch.Generator().manual_seed(0)
    for batch in loader:
        inputs, _ = unpack_batch(batch, device)
        for row in inputs.split(1):
            log_probs = torch.log_softmax(call_model(model, row), dim=-1)[0]
            label = torch.multinomial(log_probs.detach().exp().cpu(), 1, generator=generator).item()
            grads = torch.autograd.grad(log_probs[label], list(parameters.values()), allow_unused=True)
            for name, grad in zip(parameters, grads):
                if grad is not None:
                    totals[name] += grad.detach().pow(2)
            count += 1
    if count == 0:
        raise ValueError("the loader is empty: the Fisher needs at least one input")
    return {name: total / count for name, total in totals.items()}


def ewc_penalty(model: nn.Module, reference: dict[str, torch.Tensor], fisher: dict[str, torch.Tensor],
                strength: float) -> torch.Tensor:
    """``strength / 2 * sum_i F_i (w_i - w0_i)^2`` over the parameters that have a Fisher value.

    It is exactly zero at the start (``w = w0``) and grows fastest for the weights the old task
    relies on most.

    Args:
        model: The network being fine-tuned.
        reference: The weights before fine-tuning (:func:`~tlutils.topics.regularizers.snapshot_weights`).
        fisher: From :func:`fisher_diagonal`, keyed like ``model.named_parameters()``.
        strength: ``lambda`` of EWC, ``>= 0``.

    Returns:
        A scalar tensor that carries gradients.
    """
    _check_strength("strength", strength)
    named = dict(model.named_parameters())
    unknown = [name for name in fisher if name not in named or name not in reference]
    if unknown:
        raise ValueError(f"fisher has entries {unknown[:3]} that the model or the reference lack; compute both "
                         "from this model with the same parameter names")
    total = torch.zeros(())
    for name, weight in fisher.items():
        param = named[name]
        if weight.shape != param.shape:
            raise ValueError(f"fisher[{name!r}] has shape {tuple(weight.shape)}, the parameter {tuple(param.shape)}")
        change = param - reference[name].to(param.device)
        total = total.to(param.device) + (weight.to(param.device) * change.pow(2)).sum()
    return strength / 2 * total


def penalty_step(penalty: Callable[[], torch.Tensor], loss_fn: nn.Module | None = None) -> Step:
    """The default classification step plus ``penalty()``; logs ``task`` and ``penalty``.

    Example:
        >>> step = penalty_step(lambda: ewc_penalty(model, w0, fisher, strength=100.0))
        >>> fit(model, loader, step=step)
    """
    if not callable(penalty):
        raise ValueError("penalty must be a function without arguments that returns a scalar tensor")
    loss_fn = loss_fn or nn.CrossEntropyLoss()

    def step(model: nn.Module, batch, device: torch.device) -> Loss:
        inputs, targets = unpack_batch(batch, device)
        task = loss_fn(call_model(model, inputs), targets)
        extra = penalty().to(task.device)
        return Loss(task + extra, {"task": task.item(), "penalty": extra.item()}, len(targets))

    return step


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float = 2.0) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch (Hinton et al.)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs "
                         f"{tuple(teacher_logits.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}")
    student = torch.log_softmax(student_logits / temperature, dim=-1)
    teacher = torch.log_softmax(teacher_logits / temperature, dim=-1)
    return temperature**2 * nn.functional.kl_div(student, teacher, log_target=True, reduction="batchmean")


def lwf_step(weight: float = 1.0, temperature: float = 2.0, loss_fn: nn.Module | None = None) -> Step:
    """Learning without Forgetting: target cross-entropy plus distillation of the recorded source outputs.

    Each batch is ``(inputs, targets, old_source_logits)``, where the old logits were recorded with the
    original network on the same *target* inputs before fine-tuning (see :func:`record_logits`). The
    model is a :class:`~tlutils.topics.regularizers.TwoHeadNet`: ``model(x, "target")`` and
    ``model(x, "source")``. No source data is needed.

    Returns:
        A step for :func:`~tlutils.core.train.fit`; logs ``task`` and ``distill``.
    """
    _check_strength("weight", weight)
    loss_fn = loss_fn or nn.CrossEntropyLoss()

    def step(model: nn.Module, batch, device: torch.device) -> Loss:
        if not (isinstance(batch, (list, tuple)) and len(batch) == 3):
            raise ValueError("lwf_step needs (inputs, targets, old_source_logits) batches: a TensorDataset of the "
                             "target features, labels and record_logits(...) of the original model")
        inputs, targets, old = (part.to(device) for part in batch)
        shared = model.shared(inputs)
        task = loss_fn(model.heads["target"](shared), targets)
        distill = distillation_loss(model.heads["source"](shared), old, temperature)
        return Loss(task + weight * distill, {"task": task.item(), "distill": distill.item()}, len(targets))

    return step


def record_logits(model: Callable, loader, device: torch.device | None = None) -> torch.Tensor:
    """Outputs of ``model`` on every batch of ``loader`` (eval mode, no gradients), concatenated on the CPU."""
    device = resolve_device(device)
    if isinstance(model, nn.Module):
        model.eval().to(device)
    return torch.cat(map_batches(lambda inputs, _: call_model(model, inputs).float().cpu(), loader, device))


# ---------------------------------------------------------------------------------------------------------
# A causal language model forgets general text; two classification tasks learnt in sequence.
# ---------------------------------------------------------------------------------------------------------

def token_windows(tokenizer, texts, length: int, count: int) -> torch.Tensor:
    """``count x length`` token ids: consecutive windows of the texts joined by newlines (no padding).

    Raises:
        ValueError: the texts hold fewer than ``count * length`` tokens, or ``length < 2``.
    """
    if length < 2 or count < 1:
        raise ValueError(f"need length >= 2 and count >= 1, got length={length}, count={count}")
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text.strip() + "\n", add_special_tokens=False)["input_ids"])
        if len(ids) >= length * count:
            return torch.tensor(ids[: length * count]).view(count, length)
    raise ValueError(f"the texts hold {len(ids)} tokens, fewer than {count} windows of {length}")


def llama_parts(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """``(inner model, decoder layers)`` of a Llama-architecture causal LM, bare or wrapped (peft)."""
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        raise ValueError("expected a Llama-style causal LM (model.model.layers, model.model.rotary_emb), e.g. SmolLM2")
    return inner, inner.layers


class LowerDecoder(nn.Module):
    """The frozen lower part of a Llama causal LM: token ids -> the residual stream entering layer ``block``
    (``N x T x d``). Use it as the backbone of :func:`~tlutils.core.features.extract_features` to cache it."""

    def __init__(self, model: nn.Module, block: int):
        super().__init__()
        _, layers = llama_parts(model)
        if not 0 <= block < len(layers):
            raise ValueError(f"block must be in 0..{len(layers) - 1}, got {block}")
        self.model, self.block = model.eval().requires_grad_(False), block

    @torch.no_grad()
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, output_hidden_states=True).hidden_states[self.block].float()


class UpperDecoder(nn.Module):
    """The decoder layers from ``block`` on (the part :class:`LowerDecoder` leaves out), the final norm and the (frozen, shared) output matrix of a
    Llama causal LM, run on cached residual streams: ``model(hidden) -> N x T x vocabulary`` logits.

    The layers are copies (trainable); the norm is a frozen copy and the output weights a buffer that
    shares the original's memory, so only the copied layers ever train. Windows have no padding, so
    attention is plain causal.
    """

    def __init__(self, model: nn.Module, block: int):
        super().__init__()
        import copy

        inner, layers = llama_parts(model)
        if not 0 <= block < len(layers):
            raise ValueError(f"block must be in 0..{len(layers) - 1}, got {block}")
        self.first_block = block
        self.layers = copy.deepcopy(layers[block:]).requires_grad_(True)
        self.norm = copy.deepcopy(inner.norm).requires_grad_(False)
        self.rotary = copy.deepcopy(inner.rotary_emb)
        self.register_buffer("output_weight", model.get_output_embeddings().weight.detach(), persistent=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(hidden.shape[1], device=hidden.device)[None]
        rotary = self.rotary(hidden, position_ids=positions)
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=None, position_ids=positions, position_embeddings=rotary)
        return nn.functional.linear(self.norm(hidden), self.output_weight)


@torch.no_grad()
def window_log_likelihood(model: nn.Module, hidden: torch.Tensor, ids: torch.Tensor, batch_size: int = 16) -> float:
    """Mean next-token log-likelihood (nats per token, higher is better) of ``ids`` under an
    :class:`UpperDecoder` fed the cached ``hidden``; perplexity is ``exp(-value)``."""
    if hidden.shape[:2] != ids.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} does not match ids {tuple(ids.shape)}")
    model.eval()
    total = 0.0
    for h, y in zip(hidden.split(batch_size), ids.split(batch_size)):
        logits = model(h)[:, :-1].float()
        total += float(nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[:, 1:].reshape(-1),
                                                   reduction="sum"))
    return -total / (ids.shape[0] * (ids.shape[1] - 1))


def causal_window_step() -> Step:
    """A step on ``(hidden, ids)`` batches: next-token cross-entropy of an :class:`UpperDecoder`."""
    from tlutils.topics.language_models import causal_lm_loss

    def step(model: nn.Module, batch, device: torch.device) -> Loss:
        hidden, ids = (part.to(device) for part in batch)
        loss = causal_lm_loss(model(hidden), ids)
        return Loss(loss, {"task": loss.item()}, len(ids))

    return step


def replay_step(weight: float = 1.0, loss_fn: nn.Module | None = None) -> Step:
    """Rehearsal: the new task's cross-entropy plus ``weight`` x the old task's on a few stored old examples.

    Each batch is ``(new_batch, old_batch)`` (:class:`~tlutils.topics.regularizers.JointBatches` of the new
    loader and a loader of the replay buffer); the model is a
    :class:`~tlutils.topics.regularizers.TwoHeadNet` with the old task on ``"source"``, the new on ``"target"``.
    Logs ``task`` and ``replay``.
    """
    _check_strength("weight", weight)
    loss_fn = loss_fn or nn.CrossEntropyLoss()

    def step(model: nn.Module, batch, device: torch.device) -> Loss:
        if not (isinstance(batch, (list, tuple)) and len(batch) == 2):
            raise ValueError("replay_step needs (new_batch, old_batch) pairs: JointBatches(new_loader, replay_loader)")
        (new_x, new_y), (old_x, old_y) = (unpack_batch(part, device) for part in batch)
        task = loss_fn(model(new_x, "target"), new_y)
        replay = loss_fn(model(old_x, "source"), old_y)
        return Loss(task + weight * replay, {"task": task.item(), "replay": replay.item()}, len(new_y))

    return step


def lora_upper(upper: nn.Module, r: int = 8, alpha: int = 16, seed: int = 0,
               target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")) -> nn.Module:
    """LoRA adapters (peft) on the linear layers of an :class:`UpperDecoder`; everything else frozen.

    Each adapted ``W`` becomes ``W + (alpha / r) B A`` with ``B = 0`` at the start, so training starts
    exactly at the pre-trained model (same maths as :func:`tlutils.topics.peft.add_lora`, which wraps a
    whole Hugging Face model instead).
    """
    from peft import LoraConfig, inject_adapter_in_model

    if r < 1:
        raise ValueError(f"the LoRA rank r must be at least 1, got {r}")
    upper.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = inject_adapter_in_model(LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0,
                                                    target_modules=list(target_modules)), upper)
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
    return model
