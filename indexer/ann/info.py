"""What an index is and how well it searches: the JSON sidecar saved beside every index file."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from indexer.errors import AnnError

__all__ = ["IndexInfo", "FORMAT_VERSION"]

#: Version of the sidecar format this code reads and writes.
FORMAT_VERSION = 1


@dataclass
class IndexInfo:
    """What an index is and how well it searches; saved as the JSON sidecar ``PATH.json``.

    ``params`` are the tuned search parameters (``nprobe``, ``efSearch``, ``k_factor``, ``rerank``,
    whichever apply). ``measured_recall`` is recall@10 against exact search on the tuning queries
    (None when not tuned). ``memory_bytes`` is an estimate of the resident size when loaded into RAM.
    ``tuning`` says how recall was measured; ``file_bytes`` is the size of the saved index file.
    """

    factory: str
    n: int
    dimension: int
    params: dict[str, int] = field(default_factory=dict)
    recall_target: float | None = None
    measured_recall: float | None = None
    bytes_per_vector: float = 0.0
    memory_bytes: int = 0
    build_seconds: float = 0.0
    tuning: dict[str, Any] = field(default_factory=dict)
    file_bytes: int | None = None
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> IndexInfo:
        """Parse a sidecar; unknown keys, missing keys and newer format versions are errors."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AnnError(f"index sidecar is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise AnnError("index sidecar must hold a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - names
        if unknown:
            raise AnnError(f"index sidecar has unknown keys: {sorted(unknown)}")
        version = raw.get("format_version", 0)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise AnnError(f"index format version {version!r} is newer than supported ({FORMAT_VERSION})")
        try:
            info = cls(**raw)
        except TypeError as exc:
            raise AnnError(f"index sidecar is incomplete: {exc}") from exc
        info.params = {str(k): int(v) for k, v in info.params.items()}
        return info
