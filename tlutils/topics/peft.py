"""Parameter-efficient fine-tuning: LoRA adapters through the peft library."""

from __future__ import annotations

import warnings
from typing import Sequence

from torch import nn


def add_lora(model: nn.Module, r: int = 8, alpha: int = 16, dropout: float = 0.05,
             target_modules: Sequence[str] = ("q_proj", "v_proj")) -> nn.Module:
    """Wrap a causal LM with LoRA adapters (peft): frozen weights plus trainable low-rank updates.

    Each targeted linear layer ``W`` (``d_out x d_in``) becomes ``W + (alpha / r) B A`` with
    ``A`` (``r x d_in``, random) and ``B`` (``d_out x r``, zeros), so training starts exactly
    at the pre-trained model and adds ``r (d_in + d_out)`` parameters per layer.

    Args:
        model: A Hugging Face causal LM.
        r: Rank of the update.
        alpha: Scaling numerator (the update is multiplied by ``alpha / r``).
        dropout: Dropout on the adapter's input.
        target_modules: Names of the linear layers to adapt (Llama: ``q_proj``, ``k_proj``,
            ``v_proj``, ``o_proj``, ``gate_proj``, ``up_proj``, ``down_proj``).

    Returns:
        The peft model; only the adapters are trainable.
    """
    from peft import LoraConfig, get_peft_model

    if r < 1:
        raise ValueError(f"the LoRA rank r must be at least 1, got {r}")
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in target_modules if m not in names]
    if missing:
        raise ValueError(f"the model has no modules named {missing}; linear layers are named like "
                         f"{sorted(n for n, m in model.named_modules() if isinstance(m, nn.Linear))[:4]}")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                        task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft 0.21 calls a transformers method deprecated in 5.x; harmless
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)
