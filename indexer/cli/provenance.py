"""What ``bioclip-predict`` and ``bioclip-embed`` share: model loading as pybioclip does it, output
formats (pybioclip's CSV and table, JSON), and the provenance log (pybioclip's ``--log`` layout, plus
the revision, preprocessing, precision and library versions)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import click

__all__ = ["PYBIOCLIP_DEFAULT_MODEL", "load_predict_model", "format_rows", "write_output", "Provenance"]

#: pybioclip 2.x's default model.
PYBIOCLIP_DEFAULT_MODEL = "bioclip-2"


def load_predict_model(name: str, *, revision: str | None, device: str, precision: str, preprocess: str | None):
    """The model with pybioclip's preprocessing: squash for the BioCLIP models pybioclip knows, open_clip's
    own (crop) for any other, unless ``preprocess`` says otherwise."""
    from bioclip import load_model, resolve_spec
    from bioclip.reference import TOL_DATASETS

    spec = resolve_spec(name, revision)
    mode = preprocess or ("squash" if spec.source in TOL_DATASETS else "crop")
    return load_model(spec, device=device, precision=precision, preprocess=mode)


def _cell(value: Any) -> str:
    return repr(value) if isinstance(value, float) else ("" if value is None else str(value))


def format_rows(rows: Sequence[dict], columns: Sequence[str], fmt: str) -> str:
    """pybioclip's ``csv`` (pandas' ``to_csv(index=False)``: full-precision floats) and ``table``
    (prettytable), or ``json`` (a list of objects)."""
    if fmt == "json":
        return json.dumps(list(rows), indent=2, ensure_ascii=False) + "\n"
    if fmt == "table":
        from prettytable import PrettyTable

        table = PrettyTable()
        table.field_names = list(columns)
        for row in rows:
            table.add_row([row.get(c) for c in columns])
        return str(table) + "\n"
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return out.getvalue()


def write_output(text: str, output: str) -> None:
    """``output`` is a file, or ``stdout`` (pybioclip's default, literally)."""
    if output == "stdout":
        click.echo(text, nl=False)
        return
    with open(output, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)


def _now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


@dataclass
class Provenance:
    """A provenance record (pybioclip's ``--log``): a ``.json`` path gets a JSON report (the file must
    not exist), any other path a text report appended to it."""

    path: str
    model: Any
    settings: dict[str, Any]
    start: str = field(default_factory=_now)
    predictions: list[dict] = field(default_factory=list)

    def check(self) -> None:
        if self.path.endswith(".json") and os.path.exists(self.path):
            raise click.UsageError(f"File {self.path} already exists. Please choose a different file name.")

    def add(self, images: Sequence[str], details: dict[str, Any]) -> None:
        self.predictions.append({"images": list(images), "details": details})

    def _report(self) -> dict[str, Any]:
        from importlib.metadata import version

        from indexer._version import __version__

        info = self.model.describe()
        return {
            "bioclip_search_version": __version__,
            "start": self.start,
            "end": _now(),
            "command_line": " ".join(sys.argv),
            "model": info.get("source"),
            "pretrained": info.get("pretrained"),
            "revision": info.get("revision"),
            "device": self.model.device,
            "precision": self.model.precision,
            "preprocess": info.get("preprocess"),
            "versions": {
                "python": platform.python_version(),
                "torch": version("torch"),
                "open_clip": version("open_clip_torch"),
                "numpy": version("numpy"),
            },
            "top_level_settings": self.settings,
            "predictions": self.predictions,
        }

    def write(self) -> None:
        report = self._report()
        if self.path.endswith(".json"):
            with open(self.path, "w", encoding="utf-8") as fh:
                json.dump(report, fh, indent=4)
            return
        title = f"** Prediction Log - bioclip-search v{report['bioclip_search_version']} - {report['start']} to {report['end']} **"
        lines = ["*" * len(title), title, "*" * len(title), f"Command Line: {report['command_line']}"]
        lines.append(f"Model: {report['model']}")
        for key in ("pretrained", "revision", "device", "precision"):
            if report[key] is not None:
                lines.append(f"{_title(key)}: {report[key]}")
        lines.append(f"Preprocess: {json.dumps(report['preprocess'])}")
        lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()))
        for key, value in self.settings.items():
            if value is not None:
                lines.append(f"{_title(key)}: {value}")
        for pred in self.predictions:
            for key, value in pred["details"].items():
                lines.append(f"{_title(key)}: {value}")
            lines.append("Images:")
            lines += pred["images"]
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n\n")


def _title(key: str) -> str:
    return " ".join(w.capitalize() for w in key.split("_"))
