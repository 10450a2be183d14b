"""The values each sidebar filter offers over the whole collection, with counts."""

from __future__ import annotations

import threading
from typing import Any

from indexer.search import Condition, Filter
from indexer.store.schema import RANKS
from search_ui.state import filter_spec

__all__ = ["FacetCatalog"]


class FacetCatalog:
    """The values each filter offers (over the whole collection, with counts), computed once per
    collection generation. Thread-safe."""

    def __init__(self, engine, *, limit: int = 200, taxa_limit: int = 500):
        self.engine = engine
        self.limit = limit
        self.taxa_limit = taxa_limit
        self._lock = threading.Lock()
        self._generation = None
        self._cache: dict[str, Any] = {}

    def _get(self, key: str, make):
        gen = self.engine.generation
        with self._lock:
            if gen != self._generation:
                self._cache.clear()
                self._generation = gen
            if key not in self._cache:
                self._cache[key] = make()
            return self._cache[key]

    def options(self, param: str) -> list[tuple[str, int]]:
        """``(value, images)`` for a filter parameter, most images first."""
        if param in RANKS:
            return self._get(
                "rank:" + param,
                lambda: [(m.name, m.count) for m in self.engine.taxonomy.taxa(param)[: self.taxa_limit]],
            )
        spec = filter_spec(param)
        return self._get(param, lambda: [(str(v), int(c)) for v, c in self.engine.facet(spec.field, None, self.limit)])

    def ranks(self) -> list[str]:
        """Ranks at which the collection has named taxa."""
        return self._get("ranks", lambda: [r for r in RANKS if self.engine.taxonomy.taxa(r)])

    def year_range(self) -> tuple[int, int] | None:
        return self._get("year", lambda: self.engine.value_range("year"))

    def has_coordinates(self) -> int:
        return self._get(
            "coords",
            lambda: int(self.engine.count(Filter.of(Condition("has_coordinates", "=", True)))),
        )
