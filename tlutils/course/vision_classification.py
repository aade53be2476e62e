"""Notebook 05's experiments: fine-tune an ImageNet CNN with a new head, and the lesion comparison.

:func:`finetune_image_classifier` is the one recipe every run of the notebook uses (a new
head, :func:`~tlutils.core.train.fit`, optionally BatchNorm statistics re-estimated);
:func:`scratch_rate_on_validation` picks the from-scratch baseline's learning rate on a
validation split; :func:`pretrained_vs_scratch` runs the two through the comparison
protocol over seeds; :func:`lesion_comparison` trains the pre-trained and the from-scratch
network on the lesion task and scores both as a screening test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tlutils.core.compare import Budget, Comparison, Outcome, Trial, best_on_validation, compare
from tlutils.core.features import feature_loader
from tlutils.core.metrics import screening_scores
from tlutils.core.runtime import set_seed
from tlutils.core.surgery import replace_head, trainable_parameter_count
from tlutils.core.train import History, evaluate, fit, predict
from tlutils.topics.adaptation import recalibrate_batchnorm


def finetune_image_classifier(build: Callable[[], nn.Module], train_loader: DataLoader, *, num_classes: int,
                              epochs: int, lr: float, seed: int, device: torch.device | None = None,
                              progress: bool = False, recalibrate_with: DataLoader | None = None
                              ) -> tuple[nn.Module, History]:
    """Build a network, give it a new ``num_classes`` head and train every layer with AdamW.

    Args:
        build: Returns the network (pre-trained or not), e.g. ``load_mobilenet_v2``.
        train_loader: Shuffled training batches.
        num_classes: Classes of the new head.
        epochs: Passes over ``train_loader``.
        lr: The learning rate.
        seed: Seeds the new head's initialisation and the training run.
        device: Where to train.
        progress: Show a progress bar.
        recalibrate_with: If given, BatchNorm's running statistics are re-estimated on these
            (unaugmented) batches after training; see
            :func:`~tlutils.topics.adaptation.recalibrate_batchnorm`.

    Returns:
        ``(model, history)``.
    """
    set_seed(seed)
    model = replace_head(build(), num_classes=num_classes)
    history = fit(model, train_loader, epochs=epochs, lr=lr, device=device, seed=seed, progress=progress)
    if recalibrate_with is not None:
        recalibrate_batchnorm(model, recalibrate_with, device)
    return model, history


def scratch_rate_on_validation(build: Callable[[], nn.Module], train_loader: DataLoader, val_loader: DataLoader,
                               plain_train_loader: DataLoader, rates: Sequence[float], *, num_classes: int,
                               epochs: int, seed: int, device: torch.device | None = None
                               ) -> tuple[Outcome, dict[float, History], pd.DataFrame]:
    """Train a from-scratch network at each rate and keep the one best on validation.

    Every run gets the same epochs and batches. Each is scored on validation twice: as
    trained, and after its BatchNorm statistics are re-estimated on ``plain_train_loader``
    (the model kept is the re-estimated one, so the choice is not decided by stale running
    averages). The test split is not touched.

    Returns:
        ``(outcome, histories, table)``: the chosen run's :class:`~tlutils.core.compare.Outcome`
        (``predictor`` is the model, ``choice["lr"]`` the rate, ``steps`` summed over the
        search), the training history of every rate, and per rate the validation accuracy
        ``"as trained"`` and ``"recalibrated"``.
    """
    if not rates:
        raise ValueError("rates is empty: give at least one learning rate to try, e.g. (1e-3, 1e-2)")
    histories, rows = {}, {}

    def run(lr: float) -> Outcome:
        model, histories[lr] = finetune_image_classifier(build, train_loader, num_classes=num_classes, epochs=epochs,
                                                         lr=lr, seed=seed, device=device)
        as_trained = evaluate(model, val_loader, device)["accuracy"]
        recalibrate_batchnorm(model, plain_train_loader, device)
        rows[lr] = {"as trained": as_trained, "recalibrated": evaluate(model, val_loader, device)["accuracy"]}
        return Outcome(model, val=rows[lr]["recalibrated"], steps=histories[lr].steps,
                       trainable_params=trainable_parameter_count(model))

    outcome = best_on_validation(list(rates), run, name="lr")
    table = pd.DataFrame(rows).T.rename_axis("lr")
    return outcome, histories, table


PRETRAINED, SCRATCH = "fine-tuned (ImageNet weights)", "from scratch (rate chosen on validation)"


def pretrained_vs_scratch(build: Callable[..., nn.Module], train_set: Dataset, val_loader: DataLoader,
                          plain_train_loader: DataLoader, test_loader: DataLoader, *, lr: float, rates: Sequence[float],
                          epochs: int, batch_size: int, num_classes: int, seeds: Sequence[int],
                          device: torch.device | None = None, progress: bool = True
                          ) -> tuple[Comparison, dict[tuple[str, int], History], dict[int, pd.DataFrame]]:
    """Fine-tuning the pre-trained network vs the same architecture from scratch, over seeds.

    Both arms see the same images in the same seeded batch order for the same epochs. The
    from-scratch arm tries every rate in ``rates`` at every seed and keeps the best on
    validation (BatchNorm re-estimated, see :func:`scratch_rate_on_validation`); its search
    counts against the budget, which is sized for it. The test split is scored by the
    protocol only.

    Args:
        build: ``build(pretrained=True/False)`` -> the network, e.g. ``load_mobilenet_v2``.
        train_set: The training images (unaugmented).
        val_loader, plain_train_loader, test_loader: Validation batches, the training images
            in order (for BatchNorm), and the test batches.
        lr: The fine-tuning rate of the pre-trained arm.
        rates: The rates the from-scratch arm chooses from.
        epochs, batch_size, num_classes: The training run and the new head.
        seeds: One run per arm and seed.
        device: Where to train.
        progress: Show a progress bar over the runs.

    Returns:
        ``(comparison, histories, bn_tables)``: the :class:`~tlutils.core.compare.Comparison`
        of :data:`PRETRAINED` and :data:`SCRATCH`, the training history of every arm and seed
        (the chosen rate's for scratch), and per seed the from-scratch validation accuracy of
        every rate as trained and recalibrated.
    """
    histories, bn_tables = {}, {}

    def finetuned(trial: Trial) -> Outcome:
        model, history = finetune_image_classifier(lambda: build(pretrained=True), trial.loader(train_set, batch_size),
                                                   num_classes=num_classes, epochs=epochs, lr=lr, seed=trial.seed,
                                                   device=device)
        histories[PRETRAINED, trial.seed] = history
        return Outcome(model, val=evaluate(model, val_loader, device)["accuracy"], steps=history.steps,
                       trainable_params=trainable_parameter_count(model))

    def scratch(trial: Trial) -> Outcome:
        outcome, by_rate, bn_tables[trial.seed] = scratch_rate_on_validation(
            lambda: build(pretrained=False), trial.loader(train_set, batch_size), val_loader, plain_train_loader,
            rates, num_classes=num_classes, epochs=epochs, seed=trial.seed, device=device)
        histories[SCRATCH, trial.seed] = by_rate[outcome.choice["lr"]]
        return outcome

    steps = len(rates) * epochs * -(-len(train_set) // batch_size)
    comparison = compare({PRETRAINED: finetuned, SCRATCH: scratch}, seeds=seeds, budget=Budget(steps=steps),
                         score_test=lambda out: evaluate(out.predictor, test_loader, device)["accuracy"],
                         progress=progress)
    return comparison, histories, bn_tables


def lesion_comparison(builds: dict[str, Callable[[], nn.Module]], x_train: torch.Tensor, y_train: torch.Tensor,
                      x_test: torch.Tensor, y_test: torch.Tensor, positive: int, *, epochs: int, lr: float,
                      batch_size: int, seed: int, device: torch.device | None = None
                      ) -> tuple[pd.DataFrame, dict[str, nn.Module]]:
    """Train each network on the lesion patches and score it as a screening test on the test patches.

    Every network gets the same batches, epochs and rate and its BatchNorm statistics
    re-estimated on the training patches (see notebook 05, section 6).

    Args:
        builds: Name -> network constructor (e.g. pre-trained and random MobileNetV2).
        x_train, y_train, x_test, y_test: Image tensors and integer labels.
        positive: The label that counts as positive ("lesion", "malignant").
        epochs, lr, batch_size, seed, device: The training run.

    Returns:
        ``(table, models)``: per network test accuracy, sensitivity, specificity and training
        seconds; and the trained networks by name.
    """
    num_classes = int(torch.unique(y_train).numel())
    plain = feature_loader(x_train, y_train, 128)
    test_loader = feature_loader(x_test, y_test, 128)
    rows, models = {}, {}
    for name, build in builds.items():
        train_loader = feature_loader(x_train, y_train, batch_size, shuffle=True, seed=seed)
        model, history = finetune_image_classifier(build, train_loader, num_classes=num_classes, epochs=epochs, lr=lr,
                                                   seed=seed, device=device, recalibrate_with=plain)
        prediction = predict(model, test_loader, device)[0].argmax(-1).numpy()
        rows[name] = {**screening_scores(y_test.numpy(), prediction, positive), "train seconds": round(history.seconds, 1)}
        models[name] = model
    return pd.DataFrame(rows).T.rename(columns={"accuracy": "test accuracy"}), models
