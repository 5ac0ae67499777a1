"""The plug-in example in abd.defense's docstring runs as written."""

from __future__ import annotations

import doctest

import abd.defense


def test_plugin_docstring_example_runs() -> None:
    result = doctest.testmod(abd.defense, verbose=False)
    assert result.attempted >= 10
    assert result.failed == 0
