"""The reference pages of docs/ (command line, Python API, KD methods, triggers) are what the code says."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_reference_pages_are_up_to_date() -> None:
    gen = _gen_docs()
    for page, make in gen.PAGES.items():
        assert (ROOT / "docs" / page).read_text() == make(), f"docs/{page} is stale: run scripts/gen_docs.py"


def test_the_command_line_page_covers_every_command_and_its_files() -> None:
    from abd.cli import build_parser

    gen = _gen_docs()
    commands = [name for name, _ in gen._subcommands(build_parser())]
    assert set(commands) == set(gen.OUTPUTS), "every command needs its line in OUTPUTS"
    text = (ROOT / "docs" / "cli.md").read_text()
    for name in commands:
        assert f"\n## abd {name}\n" in text and f"usage: abd {name}" in text
    assert "--dry-run" in text.split("## abd grid\n", 1)[1]
