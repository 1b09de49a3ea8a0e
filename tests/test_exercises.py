import pytest

from mdiff_lite.exercises import check


def test_numbers_within_the_tolerance_only(capsys):
    assert check("e1", 0.5 + 1e-7, 0.5) is True
    assert check("e1", 0.51, 0.5) is False
    assert check("e1", 0.51, 0.5, tol=0.02) is True
    assert check("e1", float("nan"), 0.5) is False
    assert check("e1", "half", 0.5) is False
    out = capsys.readouterr().out.splitlines()
    assert out == ["e1: correct", "e1: not yet", "e1: correct", "e1: not yet", "e1: not yet: expected a number, got str"]


def test_unanswered_other_kinds_and_predicates(capsys):
    assert check("e2", None, 3) is False
    assert check("e2", "lower", "lower") is True
    assert check("e2", "higher", "lower") is False
    assert check("e2", 7, ok=lambda a: a > 5) is True
    assert check("e2", 3, ok=lambda a: True if a > 5 else "too small") is False
    out = capsys.readouterr().out.splitlines()
    assert out == ["e2: fill in your answer above", "e2: correct", "e2: not yet", "e2: correct", "e2: not yet: too small"]


def test_needs_something_to_check_against():
    with pytest.raises(ValueError, match="expected answer"):
        check("e3", 1)
