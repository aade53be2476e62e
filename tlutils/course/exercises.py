"""Exercises: check functions that tell a learner whether an answer is right.

Each exercise cell in a notebook is followed by a hidden solution cell (tagged
``solution`` and collapsed; click the bar on its left to open it). The check
functions compute the right answer themselves, so they never hard-code it.

A check whose own expected value is unusable (``None``, ``NaN``, a list where a number
belongs) raises :class:`BrokenExerciseError`: the exercise is at fault, not the learner.
"""

from __future__ import annotations

import contextlib
import io
import math
import numbers
from typing import Callable


class BrokenExerciseError(RuntimeError):
    """The exercise's check itself is broken (its expected value or tolerance), not the learner's answer."""


def _broken(what: str) -> BrokenExerciseError:
    return BrokenExerciseError(
        f"This exercise's check is broken, not your answer: {what}. Re-run the cells above "
        "it from the top; if it persists, please report this exercise to the course maintainers."
    )


def _unwrap(value):
    """A one-element numpy array, numpy scalar or tensor as a plain Python scalar; anything else unchanged."""
    if isinstance(value, (str, bytes)) or not callable(getattr(value, "item", None)):
        return value
    count = value.numel() if callable(getattr(value, "numel", None)) else getattr(value, "size", 1)
    return value.item() if count == 1 else value


def _expected_number(expected) -> float:
    """The expected value as a finite float, or a :class:`BrokenExerciseError`."""
    expected = _unwrap(expected)
    if isinstance(expected, bool) or not isinstance(expected, numbers.Real):
        raise _broken(f"its expected value is {type(expected).__name__} {expected!r}, not a number")
    if not math.isfinite(float(expected)):
        raise _broken(f"its expected value is {expected!r}")
    return float(expected)


def check_number(answer, expected: float, rel_tol: float = 1e-6, hint: str = "") -> bool:
    """Print whether a numeric answer matches the value the check computed.

    Args:
        answer: The learner's value (``None`` while the exercise is unanswered).
        expected: The right value, computed by the caller from the model or data.
        rel_tol: Relative tolerance.
        hint: Shown when the answer is wrong.

    Returns:
        True when the answer is right.

    Raises:
        BrokenExerciseError: ``expected`` is not a finite number or ``rel_tol`` is not a
            non-negative number (a fault of the exercise, not of the answer).
    """
    expected = _expected_number(expected)
    if isinstance(rel_tol, bool) or not isinstance(rel_tol, numbers.Real) or not 0 <= rel_tol < 1:
        raise _broken(f"its tolerance rel_tol={rel_tol!r} is not a number in [0, 1)")
    if answer is None:
        print("Not answered yet: replace None with your answer and run the cell again.")
        return False
    try:
        right = math.isclose(float(answer), expected, rel_tol=rel_tol)
    except (TypeError, ValueError):
        print(f"Expected a number, got {type(answer).__name__}: {answer!r}")
        return False
    print("Correct!" if right else f"Not quite: {answer} is not right. {hint}".strip())
    return right


def _expected_choice(expected) -> str:
    """The expected choice as normalised text, or a :class:`BrokenExerciseError`."""
    expected = _unwrap(expected)
    if expected is None or isinstance(expected, (list, tuple, set, frozenset, dict)) or hasattr(expected, "shape"):
        raise _broken(f"its expected choice is {type(expected).__name__} {expected!r}, not a single value")
    if isinstance(expected, float) and not math.isfinite(expected):
        raise _broken(f"its expected choice is {expected!r}")
    text = str(expected).strip().lower()
    if not text:
        raise _broken("its expected choice is empty text")
    return text


def check_choice(answer, expected, hint: str = "") -> bool:
    """Print whether a multiple-choice or text answer equals the expected one (case-insensitive).

    Raises:
        BrokenExerciseError: ``expected`` is ``None``, empty, ``NaN`` or a collection (a fault
            of the exercise, not of the answer).
    """
    expected = _expected_choice(expected)
    if answer is None:
        print("Not answered yet: replace None with your answer and run the cell again.")
        return False
    right = str(answer).strip().lower() == expected
    print("Correct!" if right else f"Not quite. {hint}".strip())
    return right


def solved(check: Callable[..., bool], *answers) -> bool:
    """Run an exercise's check on the solution without printing, so a solution cell shows nothing.

    A solution cell ends with ``assert solved(check_exercise_1, answer)``: nbval still tests the
    solution, and a reader who has not tried sees no answer and no "Correct!" in its output.

    Args:
        check: The exercise's check function (prints and returns True when right).
        *answers: The solution's value, or values when the check takes several.

    Returns:
        True.

    Raises:
        AssertionError: The solution fails its own check; the message repeats what the check said.
    """
    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        right = check(*answers)
    if not right:
        raise AssertionError(f"the solution does not pass its own check: {said.getvalue().strip()}")
    return True
