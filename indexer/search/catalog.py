"""What a collection holds, answered in SQL over one served generation: counts and facets, value
ranges, the sources' folders, failures, the other images of a record, and the overview that
``bioclip-index info`` and the app's collection page show."""

from __future__ import annotations

import logging
import os
from typing import Any

from indexer.ann.info import kind_summary
from indexer.errors import QueryError
from indexer.locations import kind_sql, local_path, safe_local_path
from indexer.search.filters import Filter
from indexer.search.state import ServedState
from indexer.store import Collection
from indexer.store.schema import ALL_COLUMNS, COLUMN_TYPES, RANK_COLUMNS, RANKS, quote_ident

__all__ = ["overview", "source_roots", "failures", "facet", "value_range", "listing_ids", "record_ids"]

log = logging.getLogger(__name__)


def _where(state: ServedState, flt: Filter) -> tuple[str, list]:
    if not flt:
        return "TRUE", []
    where, params, _ = state.filter_sql(flt)
    return where, params


def _column(column: str) -> str:
    if column not in ALL_COLUMNS:
        raise QueryError(f"no column {column!r}")
    return quote_ident(column)


def facet(state: ServedState, column: str, flt: Filter, limit: int) -> list[tuple[Any, int]]:
    """(value, images) of a metadata column among the images passing ``flt``, most images first."""
    col = _column(column)
    where, params = _where(state, flt)
    return state.execute(
        f"SELECT {col}, count(*) FROM images WHERE {where} AND {col} IS NOT NULL "
        f"GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {int(limit)}",
        params,
    )


def value_range(state: ServedState, column: str, flt: Filter) -> tuple[Any, Any] | None:
    """(smallest, largest) value of a column among the images passing ``flt``; None when none has one."""
    col = _column(column)
    where, params = _where(state, flt)
    low, high = state.execute(f"SELECT min({col}), max({col}) FROM images WHERE {where}", params)[0]
    if low is None:
        return None
    if COLUMN_TYPES.get(column) in ("INTEGER", "BIGINT"):
        return int(low), int(high)
    return low, high


def listing_ids(state: ServedState, flt: Filter, k: int, offset: int) -> tuple[list[int], int, list[str]]:
    """(ids of the page, images passing ``flt`` in all, notices), in id order."""
    if flt:
        ids_all, notices = state.allowed(flt)
        return [int(i) for i in ids_all[offset : offset + k]], int(ids_all.size), notices
    rows = state.execute(f"SELECT id FROM images ORDER BY id LIMIT {int(k)} OFFSET {int(offset)}")
    return [r[0] for r in rows], int(state.generation.images), []


def record_ids(state: ServedState, metadata: dict[str, Any], image_id: int, limit: int) -> list[int]:
    """Other images of the same specimen: same recordID, else same occurrenceID / catalogNumber."""
    for col in ("recordID", "occurrenceID", "catalogNumber"):
        v = metadata.get(col)
        if v:
            rows = state.execute(
                f"SELECT id FROM images WHERE {quote_ident(col)} = ? AND id <> ? ORDER BY id LIMIT {int(limit)}",
                [v, image_id],
            )
            return [r[0] for r in rows]
    return []


def failures(state: ServedState) -> list[dict[str, Any]]:
    """The live failures, by key: key, source, location, stage, reason, detail, failed_at."""
    rel = state.cursor().sql(
        "SELECT key, source, location, stage, reason, detail, failed_at FROM failures ORDER BY key"
    )
    cols = rel.columns
    return [dict(zip(cols, row)) for row in rel.fetchall()]


def overview(state: ServedState, collection: Collection) -> dict[str, Any]:
    """Counts, model, index: what ``bioclip-index info`` shows."""
    gen = state.generation
    cur = state.cursor()
    by_source = dict(cur.execute("SELECT source, count(*) FROM images GROUP BY 1 ORDER BY 2 DESC").fetchall())
    by_reason = dict(cur.execute("SELECT reason, count(*) FROM failures GROUP BY 1 ORDER BY 2 DESC").fetchall())
    ranks = {}
    for rank, col in zip(RANKS, RANK_COLUMNS):
        if rank == "species":
            q = (
                'SELECT count(*), count(DISTINCT ("genus" || \' \' || "specificEpithet")) FROM images '
                'WHERE "specificEpithet" IS NOT NULL AND "genus" IS NOT NULL'
            )
        else:
            q = f"SELECT count({quote_ident(col)}), count(DISTINCT {quote_ident(col)}) FROM images"
        n_img, n_taxa = cur.execute(q).fetchall()[0]
        ranks[rank] = {"images": int(n_img), "taxa": int(n_taxa)}
    entry = gen.index or {}
    kinds = kind_summary(entry.get("info"))  # per query kind; None: not measured
    model = collection.model
    return {
        "path": str(collection.path),
        "format_version": collection.manifest["format_version"],
        "generation": gen.number,
        "images": gen.images,
        "failures": gen.failed,
        "retired": gen.deleted,
        "model": model.get("name") or model.get("source"),
        "model_info": model,
        "dimension": collection.dimension,
        "preprocess": model.get("preprocess"),
        "index": entry.get("factory") or ("Flat (exact, no index file)" if gen.images else None),
        "index_info": entry.get("info"),
        "recall": {kind: (v or {}).get("recall") for kind, v in kinds.items()},
        "recall_detail": kinds,
        "unindexed_images": int(len(state.delta_ids)),
        "sources": by_source,
        "failures_by_reason": by_reason,
        "ranks": ranks,
        "extra_fields": list(gen.extra_keys),
        "created": collection.manifest.get("created"),
        "updated": gen.created,
        "last_build": gen.stats.get("last_build"),
    }


def source_roots(state: ServedState, collection: Collection) -> dict[str, tuple[str, ...]]:
    """The folder(s) each source's local files live in: the only places its images may be served from.

    Taken, in this order, from the ``sources`` entry the build records in the generation's
    ``stats`` (``{name: {"root": PATH}}`` or ``{name: PATH}``), from the source's name when it is an
    existing folder (a folder source is named after its folder), and otherwise from the deepest
    folder that every local file of the source (a tar member's shard) lies in; a source whose files
    share no folder but ``/`` gets no root, so its images are not served.
    """
    recorded: dict[str, tuple[str, ...]] = {}
    try:
        stats = collection.latest_generation().stats or {}
    except Exception:  # a damaged generation file: fall back to what the rows say
        stats = {}
    for name, entry in (stats.get("sources") or {}).items():
        root = entry.get("root") if isinstance(entry, dict) else entry
        roots = [root] if isinstance(root, str) else list(root or [])
        if roots:
            recorded[str(name)] = tuple(roots)
    rows = state.execute(
        "SELECT source, min(location), max(location) FROM images "
        f"WHERE location IS NOT NULL AND {kind_sql('location')} <> 'url' GROUP BY source"
    )
    out: dict[str, tuple[str, ...]] = dict(recorded)
    for source, lo, hi in rows:
        if source is None or source in out:
            continue
        if os.path.isabs(source) and os.path.isdir(source):
            out[source] = (source,)
            continue
        root = _shared_folder(lo, hi)
        if root is None:
            log.warning("the images of source %r share no folder; they will not be shown", source)
            continue
        out[source] = (root,)
    return out


def _shared_folder(lo: str | None, hi: str | None) -> str | None:
    """The deepest folder holding the local files of both locations (the min and max of a sorted
    set of paths hold every path between them in their common prefix)."""
    paths = [safe_local_path(local_path(loc)) if loc else None for loc in (lo, hi)]
    if paths[0] is None or paths[1] is None:
        return None
    common = os.path.commonpath([os.path.dirname(paths[0]), os.path.dirname(paths[1])])
    return None if common in ("", os.sep) else common
