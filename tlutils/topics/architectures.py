"""The model zoo compared: depth, parameters, FLOPs, heads, and what each family outputs (notebook 02).

Architectures are built on the meta device (no memory, no weights) to be measured;
pre-trained ones are probed on real inputs: ImageNet top-k, sentence similarity,
the causal mask of a GPT-family model, an attention map.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.fx
from torch import nn

from tlutils.core.runtime import get_device
from tlutils.core.surgery import parameter_count


def build_on_meta(builder: Callable[[], nn.Module]) -> nn.Module:
    """Build a model on PyTorch's ``meta`` device: every tensor has a shape but no data.

    Parameter counts, layer structure and FLOPs can be read from it instantly and
    without memory, even for VGG-16's 138 M parameters; it cannot compute real outputs.

    Args:
        builder: A function returning the model, e.g. ``lambda: torchvision.models.resnet50()``.
    """
    with torch.device("meta"):
        return builder().eval()


def count_flops(model: nn.Module, input_size: int, channels: int = 3) -> int:
    """Floating-point operations of one forward pass on one ``channels x size x size`` image.

    Counted by :class:`torch.utils.flop_counter.FlopCounterMode`: a multiply-add counts
    as 2 FLOPs (papers and torchvision's ``_ops`` often quote multiply-adds, half this).
    Works on ``meta`` models.
    """
    from torch.utils.flop_counter import FlopCounterMode

    parameter = next(model.parameters())
    dummy = torch.zeros(1, channels, input_size, input_size, device=parameter.device, dtype=parameter.dtype)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(dummy)
    return int(counter.get_total_flops())


WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


class _WeightLayerTracer(torch.fx.Tracer):
    """An fx tracer that keeps every conv and linear layer whole, subclasses included
    (timm's ``Conv2dSame`` computes its padding in Python and would not trace)."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, WEIGHT_LAYERS) or super().is_leaf_module(module, qualified_name)


def weight_layer_depth(model: nn.Module) -> int:
    """Depth as architecture names count it: weight layers (conv, linear) on the longest input-to-output path.

    ResNet-50 gives 50, VGG-16 gives 16: shortcut branches run in parallel, so they do
    not add depth. The graph comes from :func:`torch.fx.symbolic_trace`.

    Raises:
        ValueError: the model cannot be traced (data-dependent control flow).
    """
    try:
        graph = _WeightLayerTracer().trace(model)
    except Exception as error:  # fx raises several types for untraceable code
        raise ValueError(f"{type(model).__name__} cannot be traced by torch.fx: {error}") from error
    depth: dict[torch.fx.Node, int] = {}
    for node in graph.nodes:
        before = max((depth[n] for n in node.all_input_nodes), default=0)
        is_weight_layer = node.op == "call_module" and isinstance(model.get_submodule(node.target), WEIGHT_LAYERS)
        depth[node] = before + int(is_weight_layer)
    return max(depth.values())


def architecture_row(name: str, model: nn.Module, input_size: int) -> dict:
    """One row of an architecture table: depth, parameters, FLOPs and the head's share.

    Args:
        name: Shown in the ``model`` column.
        model: A classifier with a recognised head (see :func:`~tlutils.core.surgery.head_name`);
            a ``meta`` model is fine.
        input_size: The input resolution the model was trained at (224, or 299 for Inception-v3).
    """
    from tlutils.core.surgery import head_name, parameter_count

    head = head_name(model)
    params = parameter_count(model)
    return {"model": name, "input px": input_size, "depth (weight layers)": weight_layer_depth(model),
            "params (M)": params / 1e6, "GFLOPs": count_flops(model, input_size) / 1e9, "head": head,
            "head params (%)": 100 * parameter_count(getattr(model, head)) / params}


def _shares_memory(module: nn.Module, others: Sequence[torch.Tensor]) -> bool:
    """True when a parameter of ``module`` is the very same tensor as one of ``others``."""
    ids = {id(p) for p in others}
    return any(id(p) in ids for p in module.parameters())


def head_summary(model: nn.Module, head: str | None = None) -> dict:
    """Where a model's head sits and what it holds.

    Args:
        model: Any model.
        head: Attribute path of the head (e.g. ``"proj_out"``); default: :func:`~tlutils.core.surgery.head_name`.

    Returns:
        ``head`` (its path), ``layer`` (its last linear layer as text), ``head params``,
        ``body params`` (everything else; tied tensors counted once) and ``tied`` (True when
        the head's weights are the body's input embedding, as in GPT-style models).
    """
    from tlutils.core.surgery import head_name

    head = head or head_name(model)
    module = model.get_submodule(head)
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)] or [module]
    others = [p for name, p in model.named_parameters(remove_duplicate=False)
              if not (name == head or name.startswith(head + "."))]
    tied = _shares_memory(module, others)
    total, in_head = parameter_count(model), parameter_count(module)
    return {"head": head, "layer": repr(linears[-1]), "head params": in_head,
            "body params": total - (0 if tied else in_head), "tied": tied}


@torch.no_grad()
def imagenet_top_k(model: nn.Module, image: Any, transform: Callable, categories: Sequence[str], k: int = 5,
                   device: torch.device | None = None):
    """The ``k`` most probable ImageNet classes of one image.

    Args:
        model: An ImageNet classifier (1000 outputs).
        image: A photo in a form ``transform`` accepts (PIL image or uint8 array).
        transform: The preprocessing of the model's weights (size, crop, normalisation).
        categories: The 1000 class names.
        k: How many classes to return.
        device: Defaults to :func:`~tlutils.core.runtime.get_device`.

    Returns:
        A pandas DataFrame with columns ``class`` and ``probability``, most probable first.
    """
    import pandas as pd

    device = device or get_device()
    logits = model.eval().to(device)(transform(image).unsqueeze(0).to(device))[0].float().cpu()
    if logits.shape[0] != len(categories):
        raise ValueError(f"the model has {logits.shape[0]} outputs but {len(categories)} category names were given")
    top = logits.softmax(-1).topk(k)
    return pd.DataFrame({"class": [categories[i] for i in top.indices], "probability": top.values.numpy()})


@torch.no_grad()
def sentence_embeddings(tokenizer: Any, encoder: nn.Module, texts: Sequence[str], max_length: int = 128,
                        device: torch.device | None = None) -> torch.Tensor:
    """Sentence vectors the sentence-transformers way: mean of the real tokens' states, L2-normalised.

    Args:
        tokenizer: The encoder's tokenizer.
        encoder: A BERT-family encoder (``last_hidden_state`` output), e.g. MiniLM.
        texts: Sentences to embed.
        max_length: Longer texts are truncated.
        device: Defaults to :func:`~tlutils.core.runtime.get_device`.

    Returns:
        ``N x hidden`` unit-length vectors on the CPU; their dot products are cosine similarities.
    """
    from tlutils.topics.text import pool_hidden_states

    if len(texts) == 0:
        raise ValueError("no texts given")
    device = device or get_device()
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
    hidden = encoder.eval().to(device)(**batch).last_hidden_state
    return nn.functional.normalize(pool_hidden_states(hidden, batch["attention_mask"], "mean"), dim=1).cpu()


def cosine_similarity_matrix(embeddings: torch.Tensor) -> torch.Tensor:
    """All pairwise cosine similarities of ``N x D`` vectors (``N x N``)."""
    units = nn.functional.normalize(embeddings.float(), dim=1)
    return units @ units.T


def _last_hidden(body: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    return body(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).last_hidden_state


@torch.no_grad()
def future_token_influence(body: nn.Module, input_ids: torch.Tensor, replacement_id: int) -> torch.Tensor:
    """How much each position's final hidden state changes when only the *last* token is replaced.

    In a causal (GPT-style) model a token cannot see later tokens, so every earlier
    position stays exactly the same; in a bidirectional (BERT-style) encoder every
    position changes.

    Args:
        body: A transformer body returning ``last_hidden_state`` (``BertModel``, or ``LlamaModel``
            = ``causal_lm.model``).
        input_ids: ``1 x n`` token ids (n >= 2).
        replacement_id: The token id put in the last position.

    Returns:
        ``n`` relative changes ``|h'_i - h_i| / |h_i|`` (the last one is the replaced token itself).
    """
    if input_ids.ndim != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] < 2:
        raise ValueError(f"expected 1 x n token ids with n >= 2, got shape {tuple(input_ids.shape)}")
    device = next(body.parameters()).device
    original = input_ids.to(device)
    changed = original.clone()
    changed[0, -1] = replacement_id
    before, after = _last_hidden(body.eval(), original)[0], _last_hidden(body, changed)[0]
    return ((after - before).norm(dim=-1) / before.norm(dim=-1).clamp_min(1e-12)).float().cpu()


@torch.no_grad()
def attention_map(model: nn.Module, input_ids: torch.Tensor, layer: int = 0) -> torch.Tensor:
    """The attention probabilities of one layer, averaged over heads (``n x n``, rows are queries).

    The model must compute attention explicitly: call
    ``model.set_attn_implementation("eager")`` first (fused kernels return no weights).
    """
    device = next(model.parameters()).device
    ids = input_ids.to(device)
    out = model.eval()(input_ids=ids, attention_mask=torch.ones_like(ids), output_attentions=True)
    if not out.attentions or out.attentions[layer] is None:
        raise ValueError("the model returned no attention weights; call model.set_attn_implementation('eager') first")
    return out.attentions[layer][0].mean(dim=0).float().cpu()
