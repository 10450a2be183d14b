"""Living beside pybioclip: a foreign ``bioclip`` package first on the path is refused at once,
with a message that names pybioclip and says what to do; the console scripts say it in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The shape of pybioclip's package: its public names, no marker of ours.
PYBIOCLIP_INIT = '''"""pybioclip stand-in."""
from enum import Enum


class Rank(Enum):
    KINGDOM = 0


class TreeOfLifeClassifier:
    pass


class CustomLabelsClassifier:
    pass


__all__ = ["TreeOfLifeClassifier", "CustomLabelsClassifier", "Rank"]
'''


@pytest.fixture
def foreign(tmp_path):
    pkg = tmp_path / "bioclip"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(PYBIOCLIP_INIT)
    (pkg / "predict.py").write_text("")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    return pkg, env, tmp_path  # run from tmp_path: the current folder comes first on the path


def test_importing_indexer_beside_a_foreign_bioclip_fails_at_once(foreign):
    pkg, env, cwd = foreign
    done = subprocess.run(
        [sys.executable, "-c", "import indexer"], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert "ForeignBioclipError" in done.stderr
    for words in ("pybioclip", str(pkg / "__init__.py"), "python3 -m venv", "pip uninstall pybioclip"):
        assert words in done.stderr, words
    assert issubclass(__import__("indexer.errors").errors.ForeignBioclipError, ImportError)


def test_a_console_script_says_it_in_one_line_with_status_2(foreign):
    pkg, env, cwd = foreign
    script = Path(sys.executable).with_name("bioclip-search")
    if not script.exists():
        pytest.skip(f"the console scripts are not installed beside {sys.executable}")
    done = subprocess.run([str(script), "--help"], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bioclip-search: error:")
    assert "pybioclip" in lines[0] and str(pkg / "__init__.py") in lines[0]


def test_our_own_bioclip_passes_and_is_marked():
    import bioclip
    from indexer._coexist import MARKER, _foreign_origin

    assert getattr(bioclip, MARKER) is True and _foreign_origin() is None


def test_pybioclip_installed_beside_us_is_a_warning(monkeypatch, caplog):
    from importlib import metadata

    from indexer import _coexist

    monkeypatch.setattr(metadata, "distribution", lambda name: object())
    _coexist.warn_if_pybioclip_installed.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="indexer"):
            assert _coexist.warn_if_pybioclip_installed() is True
            assert _coexist.warn_if_pybioclip_installed() is True  # once: the second call is cached
    finally:
        _coexist.warn_if_pybioclip_installed.cache_clear()
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "shares the import name 'bioclip'" in caplog.records[0].message
