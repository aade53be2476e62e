"""Exercises: check functions that tell a learner whether an answer is right.

Each exercise cell in a notebook is followed by a hidden solution cell (tagged
``solution`` and collapsed; click the bar on its left to open it). The check
functions compute the right answer themselves, so they never hard-code it.
"""

from __future__ import annotations

import math


def check_number(answer, expected: float, rel_tol: float = 1e-6, hint: str = "") -> bool:
    """Print whether a numeric answer matches the value the check computed.

    Args:
        answer: The learner's value (``None`` while the exercise is unanswered).
        expected: The right value, computed by the caller from the model or data.
        rel_tol: Relative tolerance.
        hint: Shown when the answer is wrong.

    Returns:
        True when the answer is right.
    """
    if answer is None:
        print("Not answered yet: replace None with your answer and run the cell again.")
        return False
    try:
        right = math.isclose(float(answer), float(expected), rel_tol=rel_tol)
    except (TypeError, ValueError):
        print(f"Expected a number, got {type(answer).__name__}: {answer!r}")
        return False
    print("Correct!" if right else f"Not quite: {answer} is not right. {hint}".strip())
    return right


def check_choice(answer, expected, hint: str = "") -> bool:
    """Print whether a multiple-choice or text answer equals the expected one (case-insensitive)."""
    if answer is None:
        print("Not answered yet: replace None with your answer and run the cell again.")
        return False
    right = str(answer).strip().lower() == str(expected).strip().lower()
    print("Correct!" if right else f"Not quite. {hint}".strip())
    return right
