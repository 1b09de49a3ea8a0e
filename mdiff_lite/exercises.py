"""The check cells of the notebooks' exercises: one line that says whether an answer is right.

Each exercise cell holds ``answer_N = None``; the check cell below it calls
``check("exercise N", answer_N, expected)`` (or ``ok=`` a predicate, for answers that are not a
single number), which prints "fill in your answer above", "correct" or "not yet: ..." and
returns True only for a correct answer. The expected value is computed in the check cell, from the
notebook's own objects, never typed in. A solution follows in a collapsed ``<details>`` block.
"""

from __future__ import annotations

import math
import numbers

__all__ = ["check"]


def check(name: str, answer, expected=None, *, tol: float = 1e-6, ok=None) -> bool:
    """Print and return whether ``answer`` is right.

    Numbers are compared with ``expected`` to an absolute tolerance ``tol``; anything else (a
    string, a tuple, a schedule) with ``==``, or with ``ok(answer)`` when ``ok`` is given (then
    ``ok`` may return a bool, or a string that says what is still wrong).
    """
    if ok is None and expected is None:
        raise ValueError("give the expected answer or an ok= predicate")
    if answer is None:
        print(f"{name}: fill in your answer above")
        return False
    if ok is not None:
        verdict = ok(answer)
        right = verdict is True
        hint = "" if right or not isinstance(verdict, str) else f": {verdict}"
    elif isinstance(expected, numbers.Real) and not isinstance(expected, bool):
        try:
            value = float(answer)
        except (TypeError, ValueError):
            print(f"{name}: not yet: expected a number, got {type(answer).__name__}")
            return False
        right = math.isfinite(value) and abs(value - float(expected)) <= tol
        hint = ""
    else:
        right, hint = answer == expected, ""
    print(f"{name}: correct" if right else f"{name}: not yet{hint}")
    return right
