"""Helpers of notebook 03: the lambda sweep plot and the penalty arms of section 6."""

from __future__ import annotations

from typing import Callable, Sequence


def plot_lambda_sweep(lambdas: Sequence[float], source_accuracy: Sequence[float],
                      target_accuracy: Sequence[float], highlight: float | None = None, title: str = ""):
    """Source and target accuracy against the target weight ``lambda`` (symmetric-log x axis).

    Args:
        lambdas: The swept values (0 allowed).
        source_accuracy, target_accuracy: One accuracy per lambda.
        highlight: A lambda to mark with a vertical line (e.g. the slider's value).
        title: Figure title.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    if not len(lambdas) == len(source_accuracy) == len(target_accuracy):
        raise ValueError("lambdas, source_accuracy and target_accuracy need one value each per run")
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    ax.plot(lambdas, source_accuracy, "o-", label="source task (Fashion-MNIST)")
    ax.plot(lambdas, target_accuracy, "s-", label="target task (MNIST)")
    if highlight is not None:
        ax.axvline(highlight, color="grey", linestyle="--", label=f"lambda = {highlight:g}")
    positive = [lam for lam in lambdas if lam > 0] or [1.0]
    ax.set_xscale("symlog", linthresh=min(positive))
    ax.set(xlabel="lambda (weight of the target loss)", ylabel="validation accuracy", ylim=(0, 1),
           title=title or "L_total = L_source + lambda * L_target")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def penalty_arm(fine_tune: Callable, penalty: str, alphas: Sequence[float], log: list | None = None) -> Callable:
    """An arm for :func:`~tlutils.core.compare.compare`: fine-tune with one penalty, alpha chosen on validation.

    For the trial's seed, ``fine_tune(penalty, alpha, seed) -> (model, start, history)`` runs once per
    alpha; :func:`~tlutils.core.compare.best_on_validation` keeps the model with the highest final
    validation accuracy (``history.last("val_accuracy")``), records ``choice["alpha"]`` and counts
    the steps of every run against the budget. The test split is never touched here.

    Args:
        fine_tune: The notebook's fine-tuning function; ``start`` holds the pre-trained weights w0.
        penalty: ``"none"``, ``"l2"`` (weight decay) or ``"l2_sp"``.
        alphas: The strengths to try (``[0.0]`` for ``"none"``).
        log: If given, one row per run is appended: penalty, alpha, seed, ``body_distance``
            (``||w_body - w0||``, the classifier left out) and ``val_accuracy``.

    Returns:
        ``arm(trial) -> Outcome``.
    """
    from tlutils.core.compare import Outcome, best_on_validation
    from tlutils.topics.regularizers import total_weight_distance

    def arm(trial):
        def run(alpha):
            model, start, history = fine_tune(penalty, alpha, trial.seed)
            val = float(history.last("val_accuracy"))
            if log is not None:
                log.append({"penalty": penalty, "alpha": alpha, "seed": trial.seed, "val_accuracy": val,
                            "body_distance": float(total_weight_distance(model, start, ["classifier"]))})
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            return Outcome(model, val=val, steps=int(history.steps), trainable_params=trainable)

        return best_on_validation(list(alphas), run, name="alpha")

    return arm
