"""The documents stay true: the README's test command is what CI runs, CI lints and type-checks
before the tests, and docs/ARCHITECTURE.md names every module."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_test_command() -> str:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("**Run the tests**", 1)[1]
    return re.search(r"```bash\n(.*?)\n```", block, re.S).group(1).strip()


def test_ci_runs_the_readme_test_command_last():
    lines = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[-1] == _readme_test_command()


def test_ci_lints_and_type_checks_before_the_tests():
    text = (ROOT / ".ci" / "run").read_text()
    checks = text.index("ruff check . && ruff format --check . && mypy")
    assert checks < text.index("python -m pytest")


def test_the_architecture_page_names_every_module():
    page = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    missing = []
    for package in ("bioclip", "indexer", "search_ui"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if "sample" in rel.parts or path.name == "__init__.py":
                continue
            if f"`{rel.as_posix()}`" not in page and f"`{rel.with_suffix('').as_posix()}`" not in page:
                missing.append(rel.as_posix())
    assert missing == [], f"docs/ARCHITECTURE.md does not name: {missing}"


def test_the_readme_says_how_to_live_beside_pybioclip():
    readme = (ROOT / "README.md").read_text()
    assert "### Installed beside pybioclip" in readme or "## Installed beside pybioclip" in readme
    assert "pip uninstall pybioclip" in readme


def test_the_readme_lists_the_apps_csv_columns_in_order():
    from search_ui.export import EXPORT_COLUMNS

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    para = readme[readme.index("**Download CSV**") :]
    para = para[: para.index("\n\n")]
    named = [c for c in re.findall(r"`([A-Za-z_]+)`", para) if c in EXPORT_COLUMNS]
    assert named == list(EXPORT_COLUMNS)
