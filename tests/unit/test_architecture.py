"""ARCHITECTURE.md's module map names every module of `proxy/`, and no module that is gone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]


def _mapped_modules() -> set[str]:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    table = text.split("## Module map", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for row in table.splitlines():
        cells = row.split("|")
        if len(cells) > 2:
            names.update(re.findall(r"`([a-z_]+\.py)`", cells[1]))
    return names


def test_the_module_map_lists_exactly_the_modules_of_the_package() -> None:
    modules = {path.name for path in (ROOT / "proxy").glob("*.py")} - {"__init__.py"}
    mapped = _mapped_modules()
    assert sorted(modules - mapped) == [], "modules missing from ARCHITECTURE.md's map"
    assert sorted(mapped - modules) == [], "ARCHITECTURE.md maps modules that do not exist"
