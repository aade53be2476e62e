"""The four text classifiers of notebook 07 on one split, tabulated."""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from tlutils.core.datasets import text_loader
from tlutils.topics.text import (
    finetune_text_classifier,
    fit_tfidf_logreg,
    pooled_features,
)


def _accuracy(model: nn.Module, loader, device: torch.device | None) -> float:
    from tlutils.core.train import evaluate

    return float(evaluate(model, loader, device)["accuracy"])


def compare_text_classifiers(encoder_name: str, train: tuple[Sequence[str], Sequence[int]],
                             val: tuple[Sequence[str], Sequence[int]], test: tuple[Sequence[str], Sequence[int]],
                             num_classes: int, max_length: int = 64, batch_size: int = 16, epochs: int = 2,
                             lr: float = 1e-4, head_lr: float = 1e-3, llrd_decay: float = 0.3,
                             probe_epochs: int = 100, probe_lr: float = 1e-3, seed: int = 0,
                             cache_prefix: str | None = None, device: torch.device | None = None,
                             progress: bool = False):
    """Run the four classifiers of notebook 07 on one split and tabulate them.

    1. TF-IDF + logistic regression (no pre-training);
    2. frozen encoder, mean-pooled features, linear head (feature extraction);
    3. full fine-tuning at one learning rate;
    4. full fine-tuning with layer-wise learning-rate decay (LLRD).

    Args:
        encoder_name: Asset name for :func:`~tlutils.core.models.load_text_encoder`; each
            fine-tuning run starts from a fresh copy of the pre-trained weights.
        train, val, test: ``(texts, labels)`` pairs.
        num_classes: Number of classes.
        max_length, batch_size, epochs: Tokenisation and fine-tuning sizes.
        lr: Learning rate of plain fine-tuning.
        head_lr, llrd_decay: The head's rate and the decay factor per block for LLRD.
        probe_epochs, probe_lr: Training of the linear head on cached features (full batch,
            cheap); the validation split picks its best epoch.
        seed: Seeds every random step.
        cache_prefix: Feature cache names start with this (e.g. ``"07_bbc"``); ``None`` disables caching.
        device: Defaults to :func:`~tlutils.core.runtime.get_device`.
        progress: Show progress bars.

    Returns:
        A pandas DataFrame with one row per method: ``trainable params``, ``seconds``
        (training; for the frozen encoder, extracting the training vectors plus the head,
        near zero for the extraction when cached) and ``test accuracy``.
    """
    import time

    import pandas as pd

    from tlutils.core.features import feature_loader, train_linear_probe
    from tlutils.core.models import load_text_encoder
    from tlutils.core.surgery import trainable_parameter_count

    rows = []
    start = time.perf_counter()
    baseline = fit_tfidf_logreg(train[0], train[1], seed=seed)
    rows.append({"method": "TF-IDF + logistic regression", "trainable params": baseline[-1].coef_.size
                 + baseline[-1].intercept_.size, "seconds": time.perf_counter() - start,
                 "test accuracy": float(baseline.score(list(test[0]), np.asarray(test[1])))})

    tokenizer, encoder = load_text_encoder(encoder_name)

    def features_of(split: str, data: tuple[Sequence[str], Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        return pooled_features(encoder, tokenizer, data[0], data[1], "mean", max_length, device=device,
                               cache_name=f"{cache_prefix}_{split}" if cache_prefix else None, progress=progress)

    start = time.perf_counter()  # training cost: extracting the training vectors, then the head
    train_features = features_of("train", train)
    head, _ = train_linear_probe(*train_features, num_classes, epochs=probe_epochs, lr=probe_lr,
                                 batch_size=len(train[0]), seed=seed, device=device, val=features_of("val", val))
    seconds = time.perf_counter() - start
    test_features = features_of("test", test)
    rows.append({"method": "frozen encoder + linear head", "trainable params": trainable_parameter_count(head),
                 "seconds": seconds,
                 "test accuracy": _accuracy(head, feature_loader(*test_features, batch_size=256), device)})

    val_loader = text_loader(val[0], val[1], tokenizer, max_length, 64)
    test_loader = text_loader(test[0], test[1], tokenizer, max_length, 64)
    for method, decay in (("full fine-tuning", None), ("fine-tuning with LLRD", llrd_decay)):
        # a new loader per run: both methods see the same batches in the same order
        train_loader = text_loader(train[0], train[1], tokenizer, max_length, batch_size, shuffle=True, seed=seed,
                                   group_by_length=True)
        _, encoder = load_text_encoder(encoder_name)
        model, history = finetune_text_classifier(encoder, train_loader, val_loader, num_classes, epochs, lr=lr,
                                                  llrd_decay=decay, head_lr=head_lr, seed=seed, device=device,
                                                  progress=progress)
        rows.append({"method": method, "trainable params": trainable_parameter_count(model),
                     "seconds": history.seconds, "test accuracy": _accuracy(model, test_loader, device)})
    return pd.DataFrame(rows).set_index("method")


#: The fine-tuning recipes the validation split chooses between (per seed): one rate for every
#: layer, or layer-wise learning-rate decay (head rate, factor per block going down).
FINETUNE_RECIPES = {"one rate 1e-4": {"lr": 1e-4}, "LLRD 1e-3 x 0.3": {"llrd_decay": 0.3, "head_lr": 1e-3}}
#: Inverse regularisation strengths the validation split chooses from, for the two linear models.
LINEAR_CS = (0.1, 1.0, 10.0)


def _logistic_regression(train_x, train_y, C: float, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000, random_state=seed)).fit(train_x, train_y)


def seeded_text_arms(pool: tuple[Sequence[str], Sequence[int]], pool_features: torch.Tensor,
                     test: tuple[Sequence[str], Sequence[int]], test_features: torch.Tensor, *,
                     sizes: dict[str, int], encoder_name: str, tokenizer, num_classes: int,
                     max_length: int = 64, batch_size: int = 16, epochs: int = 2,
                     recipes: dict[str, dict] | None = None, cs: Sequence[float] = LINEAR_CS,
                     finetune: bool = True, models: dict | None = None, verbose: bool = True,
                     device: torch.device | None = None):
    """The arms of notebook 07's comparisons, for :func:`tlutils.core.compare.compare`.

    Every seed draws its own training and validation split from ``pool`` (``sizes`` examples
    per class), so the spread over seeds includes which examples were labelled; the test split
    is the same for all. Every choice is made on that seed's validation split:

    1. ``TF-IDF + logistic regression``: the regularisation C, from ``cs``;
    2. ``frozen encoder + linear head``: logistic regression on the cached, standardised
       mean-pooled vectors (``pool_features``, ``test_features``), C from ``cs``;
    3. ``fine-tuning`` (when ``finetune``): every weight of a fresh copy of the encoder, the
       recipe (``recipes``: one rate or layer-wise decay) and the epoch chosen on validation.

    Args:
        pool: ``(texts, labels)`` from which each seed draws train and validation examples.
        pool_features: Frozen features of ``pool``, row for row.
        test: ``(texts, labels)`` of the test split, scored by the protocol only.
        test_features: Frozen features of ``test``.
        sizes: ``{"train": per class, "val": per class}``.
        encoder_name: Asset name for :func:`~tlutils.core.models.load_text_encoder`.
        tokenizer: Its tokenizer.
        num_classes: Number of classes.
        max_length, batch_size, epochs: Tokenisation and fine-tuning sizes.
        recipes: Name -> keyword arguments of :func:`finetune_text_classifier`; default
            :data:`FINETUNE_RECIPES`.
        cs: The C values to try for the linear models.
        finetune: Include the fine-tuning arm.
        models: If a dict, the chosen fine-tuned model of every seed is stored in it (by seed).
        verbose: Print one line per fine-tuning run (the progress of a long comparison).
        device: Defaults to :func:`~tlutils.core.runtime.get_device`.

    Returns:
        ``(arms, score_test, budget)``: the arms, the test scorer (accuracy) and the
        :class:`~tlutils.core.compare.Budget` (optimizer steps of the fine-tuning search).
    """
    from tlutils.core.compare import Budget, Outcome, best_on_validation
    from tlutils.core.models import load_text_encoder
    from tlutils.core.surgery import trainable_parameter_count
    from tlutils.topics.text import per_class_split

    texts, labels = list(pool[0]), np.asarray(pool[1])
    recipes = dict(FINETUNE_RECIPES if recipes is None else recipes)
    pool_x, test_x = pool_features.numpy(), test_features.numpy()

    def split(trial, part):
        idx = per_class_split(labels, sizes, seed=trial.seed)[part]
        return [texts[i] for i in idx], labels[idx], idx

    def linear_arm(fit_linear, make_inputs, test_inputs):
        def arm(trial):
            (train_t, train_y, train_i), (val_t, val_y, val_i) = split(trial, "train"), split(trial, "val")
            train_in, val_in = make_inputs(train_t, train_i), make_inputs(val_t, val_i)

            def run(C):
                fitted = fit_linear(train_in, train_y, C, trial.seed)
                return Outcome(fitted, val=float(fitted.score(val_in, val_y)), steps=0,
                               trainable_params=_coef_count(fitted))
            out = best_on_validation(cs, run, name="C")
            fitted = out.predictor
            return dataclasses.replace(out, predictor=lambda: fitted.predict(test_inputs))
        return arm

    tfidf_arm = linear_arm(lambda x, y, C, seed: fit_tfidf_logreg(x, y, C=C, seed=seed), lambda t, i: t, list(test[0]))
    frozen_arm = linear_arm(_logistic_regression, lambda t, i: pool_x[i], test_x)

    steps_per_epoch = math.ceil(sizes["train"] * num_classes / batch_size)
    budget = Budget(steps=len(recipes) * epochs * steps_per_epoch)
    test_loader = text_loader(list(test[0]), np.asarray(test[1]), tokenizer, max_length, 64)

    def finetune_arm(trial):
        (train_t, train_y, _), (val_t, val_y, _) = split(trial, "train"), split(trial, "val")
        val_loader = text_loader(val_t, val_y, tokenizer, max_length, 64)

        def run(name):
            train_loader = text_loader(train_t, train_y, tokenizer, max_length, batch_size, shuffle=True,
                                       seed=trial.seed, group_by_length=True)   # the same batches for every recipe
            _, encoder = load_text_encoder(encoder_name)
            model, history = finetune_text_classifier(encoder, train_loader, val_loader, num_classes, epochs,
                                                      seed=trial.seed, device=device, progress=False, **recipes[name])
            best = history.epochs[(history.best_epoch or len(history)) - 1]
            if verbose:
                print(f"seed {trial.seed}, fine-tuning with {name}: validation accuracy {best['val_accuracy']:.3f} "
                      f"(epoch {best['epoch']}), {history.seconds:.0f} s", flush=True)
            return Outcome(model, val=float(best["val_accuracy"]), steps=history.steps,
                           trainable_params=trainable_parameter_count(model), choice={"epoch": best["epoch"]})
        out = best_on_validation(list(recipes), run, name="recipe")
        if models is not None:
            models[trial.seed] = out.predictor
        model = out.predictor
        return dataclasses.replace(out, predictor=lambda: _predict(model, test_loader, device))

    test_y = np.asarray(test[1])
    arms = {"TF-IDF + logistic regression": tfidf_arm, "frozen encoder + linear head": frozen_arm}
    if finetune:
        arms["fine-tuning"] = finetune_arm
    return arms, (lambda outcome: float(np.mean(np.asarray(outcome.predictor()) == test_y))), budget


def _coef_count(pipeline) -> int:
    model = pipeline[-1]
    return int(model.coef_.size + model.intercept_.size)


def _predict(model: nn.Module, loader, device: torch.device | None) -> np.ndarray:
    from tlutils.core.train import predict

    return predict(model, loader, device)[0].argmax(-1).numpy()


def predictions_correct(model: nn.Module, loader, labels: Sequence[int], device: torch.device | None = None) -> np.ndarray:
    """Per-example correctness (a boolean array) of a classifier over an unshuffled loader.

    Args:
        model: A text classifier returning class logits.
        loader: Batches in the order of ``labels`` (not shuffled).
        labels: The true labels.
        device: Defaults to :func:`~tlutils.core.runtime.get_device`.

    Returns:
        ``predicted == labels`` for every example; its mean is the accuracy, and two models'
        arrays give a paired difference (:func:`tlutils.topics.text.paired_gap`).
    """
    return _predict(model, loader, device) == np.asarray(labels)
