"""docs/architecture.md's module table lists exactly the package's modules.

The rule (stated above the table): one row per `canary_lib/**/*.py`, named by its path under `canary_lib/`,
except the packages' `__init__.py` (re-exports) and `canary_lib/__main__.py` (`python -m canary_lib`).
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "canary_lib"
DOC = ROOT / "docs" / "architecture.md"
SECTION = "## Modules"
EXCLUDED = {"__init__.py", "__main__.py"}


def package_modules() -> set[str]:
    return {
        p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*.py")
        if p.name not in EXCLUDED and "__pycache__" not in p.parts
    }


def table_rows(text: str) -> list[str]:
    """The first cell (a `path`) of every row of the table under '## Modules', in order."""
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    rows = []
    for line in text[start : end if end != -1 else None].splitlines():
        match = re.match(r"\|\s*`([^`]+)`\s*\|", line)
        if match:
            rows.append(match.group(1))
    return rows


def table_problems(rows: list[str], modules: set[str]) -> list[str]:
    problems = []
    missing = sorted(modules - set(rows))
    extra = sorted(set(rows) - modules)
    repeated = sorted({r for r in rows if rows.count(r) > 1})
    if missing:
        problems.append("modules missing from the table (add a row each): " + ", ".join(missing))
    if extra:
        problems.append("rows naming no module (removed or renamed? fix or drop them): " + ", ".join(extra))
    if repeated:
        problems.append("rows listed more than once: " + ", ".join(repeated))
    return problems


def test_module_table_lists_exactly_the_package_modules():
    rows = table_rows(DOC.read_text())
    assert len(rows) > 20, f"found only {rows} in {DOC}'s {SECTION!r} table: did its layout change?"
    problems = table_problems(rows, package_modules())
    assert not problems, f"{DOC.relative_to(ROOT)}, {SECTION!r}:\n  " + "\n  ".join(problems)


def test_the_check_names_missing_extra_and_repeated_rows():
    text = (
        "## Modules\n\n| module | what |\n|---|---|\n| `a.py` | x |\n| `old.py` | y |\n| `a.py` | z |\n\n"
        "## Next\n| `b.py` | no |\n"
    )
    rows = table_rows(text)
    assert rows == ["a.py", "old.py", "a.py"]  # stops at the next section
    problems = table_problems(rows, {"a.py", "data/b.py"})
    assert problems == [
        "modules missing from the table (add a row each): data/b.py",
        "rows naming no module (removed or renamed? fix or drop them): old.py",
        "rows listed more than once: a.py",
    ]


def test_package_modules_follow_the_rule():
    modules = package_modules()
    assert {"sweep.py", "data/prepare.py", "organism/world.py"} <= modules
    assert not any(Path(m).name in EXCLUDED for m in modules)
