"""Users have the repository, not the design notes beside it: code, help texts and docs point to
the project's own docs, never to CONTRACTS or ../shared."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import run_phpo

REPO = Path(__file__).resolve().parents[1]
SHIPPED = (
    "schemas",
    "steering",
    "server",
    "evaluation_container",
    "client",
    "data",
    "serving",
    "examples",
    "docs",
    "helm",
)
OUTSIDE = re.compile(r"CONTRACTS|ARCHITECTURE\.md|\.\./shared|shared/design")


def test_no_citation_of_the_design_notes_in_what_users_get():
    hits = []
    for top in SHIPPED:
        for p in (REPO / top).rglob("*"):
            if p.is_file() and p.suffix in (".py", ".md", ".sh", ".json", ".yaml", ".txt"):
                for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
                    if OUTSIDE.search(line):
                        hits.append(f"{p.relative_to(REPO)}:{n}: {line.strip()}")
    readme = (REPO / "README.md").read_text()
    hits += [f"README.md: {m.group(0)}" for m in OUTSIDE.finditer(readme)]
    assert hits == []


def test_help_texts_cite_nothing_outside_the_repository():
    for args in (["--help"], ["submit", "--help"], ["run-local", "--help"], ["up", "--help"]):
        out = run_phpo(*args).stdout
        assert not OUTSIDE.search(out), (args, OUTSIDE.search(out))
