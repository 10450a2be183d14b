"""The map's data, without Streamlit: the bundled basemap (Natural Earth's countries at 1:110m,
so the map needs no tile server), points grouped into clusters with counts, and the view that
fits them.

Clusters are cells of a grid whose size follows the points' spread (about 40 cells across it):
points in one cell become one circle at their mean position, labelled with how many there are, so
overlapping specimens never hide each other. deck.gl's JSON layers cannot cluster by zoom, so the
grouping is fixed per search (documented on the page).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Cluster", "clusters", "cell_size", "view_for", "basemap", "BASEMAP_FILE", "BASEMAP_CREDIT"]

#: Natural Earth 1:110m admin-0 countries (public domain), via world-atlas 2.0.2 (ISC); see
#: ``assets/NOTICE.md``.
BASEMAP_FILE = Path(__file__).resolve().parent / "assets" / "countries-110m.geojson"
BASEMAP_CREDIT = "Countries: Natural Earth (public domain)"


@dataclass(frozen=True)
class Cluster:
    """Points of one grid cell: their mean position, how many, and the ids of up to 20 of them."""

    lat: float
    lon: float
    count: int
    ids: tuple[int, ...]
    names: tuple[str, ...]

    @property
    def label(self) -> str:
        return str(self.count)


def cell_size(points: Sequence[dict[str, Any]], cells_across: int = 40) -> float:
    """The grid cell (degrees) for ``points``: their spread over ``cells_across``, between 0.01°
    (points closer than about a kilometre are one place) and 10°."""
    if not points:
        return 1.0
    lats = [p["lat"] for p in points]
    lons = [p["lon"] for p in points]
    spread = max(max(lats) - min(lats), max(lons) - min(lons))
    return min(10.0, max(0.01, spread / cells_across))


def clusters(points: Sequence[dict[str, Any]], cell: float | None = None) -> list[Cluster]:
    """``points`` (``{"lat", "lon", "id", "name"}``) grouped by grid cell, largest first."""
    cell = cell or cell_size(points)
    groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for p in points:
        groups.setdefault((math.floor(p["lat"] / cell), math.floor(p["lon"] / cell)), []).append(p)
    out = []
    for members in groups.values():
        n = len(members)
        names = tuple(dict.fromkeys(str(m.get("name") or "") for m in members if m.get("name")))
        out.append(
            Cluster(
                lat=sum(m["lat"] for m in members) / n,
                lon=sum(m["lon"] for m in members) / n,
                count=n,
                ids=tuple(int(m["id"]) for m in members[:20]),
                names=names[:5],
            )
        )
    return sorted(out, key=lambda c: (-c.count, c.lat, c.lon))


def view_for(points: Sequence[dict[str, Any]]) -> dict[str, float]:
    """``latitude``, ``longitude`` and ``zoom`` of a view that shows all ``points`` (web-mercator
    zoom: 0 shows the world in 512 px; each step halves the span)."""
    if not points:
        return {"latitude": 20.0, "longitude": 0.0, "zoom": 0.6}
    lats = [p["lat"] for p in points]
    lons = [p["lon"] for p in points]
    span = max(max(lats) - min(lats), (max(lons) - min(lons)) / 1.6, 0.05)
    zoom = max(0.5, min(12.0, math.log2(300.0 / span)))
    return {"latitude": (max(lats) + min(lats)) / 2, "longitude": (max(lons) + min(lons)) / 2, "zoom": zoom}


@functools.lru_cache(maxsize=1)
def basemap() -> dict[str, Any]:
    """The bundled countries as a GeoJSON FeatureCollection (read once per process)."""
    with open(BASEMAP_FILE, encoding="utf-8") as fh:
        return json.load(fh)
