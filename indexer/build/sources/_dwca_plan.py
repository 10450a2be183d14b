"""The SQL that turns a loaded Darwin Core Archive into one image row per media item, with its record's metadata: media from the multimedia, Audubon and EOL extensions or ``associatedMedia``, occurrences from the core or an Occurrence extension."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from indexer.build.sources._archive import ArchiveFiles
from indexer.build.sources._common import (
    json_members_sql,
    json_object_sql,
    json_object_text_sql,
    object_members_sql,
)
from indexer.build.sources._dwca_load import _Entity, _Loader
from indexer.build.sources._dwca_meta import _MEDIA_ROW_TYPES, _NON_RECORD_CORES, _OCCURRENCE, Descriptor, _local_name
from indexer.errors import SourceError
from indexer.store.schema import DWC_COLUMNS, canonical_column, quote_ident

log = logging.getLogger("indexer.build.sources.dwca")


#: Terms never mapped onto a record column: they are ours, or only meaningful on a media row.
_NOT_RECORD_COLUMNS = {"mediaURL", "mediaFormat", "recordID"}


_IMAGE_FORMATS = ("jpg", "jpeg", "png", "gif", "tif", "tiff", "webp", "bmp", "jp2", "heic", "avif")


# An associatedMedia list: "|" and ";" always separate; a comma separates when a URL or a space
# follows it (IIIF URLs contain bare commas); white space separates when a URL follows it.
_ASSOC_COMMA = r",\s*(https?://)|,\s+"


_ASSOC_SPACE = r"\s+(https?://)"


def _media_role_columns(ent: _Entity) -> dict[str, list[str]]:
    """Columns of a media entity feeding each output role, in order of preference."""

    def pick(*names: str, uri_prefix: str | None = None) -> list[str]:
        out = []
        for n in names:
            c = ent.column(n, uri_prefix=uri_prefix)
            if c is not None and c not in out:
                out.append(c)
        return out

    return {
        # Audubon Core: accessURI, else the good-quality and the thumbnail versions (tried in that
        # order when the first fails: see "alts")
        "url": pick("accessURI") + pick("identifier") + pick("goodQualityAccessURI") + pick("thumbnailAccessURI"),
        "type": ent.columns_named("type"),
        "format": pick("format"),
        "license": pick("license", "WebStatement", "UsageTerms")
        + pick("rights", uri_prefix="http://purl.org/dc/terms/"),
        "rightsHolder": pick("rightsHolder", "Owner"),
        "occurrenceID": pick("occurrenceID"),
    }


def _alternatives(cols: list[str], alias: str) -> str:
    """SQL: the other http(s) URLs of ``cols`` than the first one given (the one used), in order,
    one per line (a downloader tries them when the first fails), or NULL. A column that holds no
    URL (an ``identifier`` such as ``media-17``) is no alternative; every column stays in ``extra``."""
    if len(cols) < 2:
        return "CAST(NULL AS VARCHAR)"
    used = f"coalesce({', '.join(f'{alias}.{c}' for c in cols)})"
    others = ", ".join(
        f"CASE WHEN {alias}.{c} <> {used} AND regexp_matches({alias}.{c}, '^https?://') THEN {alias}.{c} END"
        for c in cols
    )
    return f"nullif(concat_ws(chr(10), {others}), '')"


def _coalesce(cols: list[str], alias: str) -> str | None:
    if not cols:
        return None
    exprs = [f"{alias}.{c}" for c in cols]
    return exprs[0] if len(exprs) == 1 else f"coalesce({', '.join(exprs)})"


@dataclass(frozen=True)
class PlanOptions:
    """``name``: the source's name (the start of every key); ``record_license``: a record's licence
    also applies to its images that have none of their own."""

    name: str
    record_license: bool = False


class _Plan:
    """Loads the archive's entities and builds the one query that yields its image rows."""

    def __init__(self, con, files: ArchiveFiles, base: str, descriptor: Descriptor, report: dict, options: PlanOptions):
        self.con = con
        self.loader = _Loader(con, files, base, report)
        self.descriptor = descriptor
        self.report = report
        self.name = options.name
        self.record_license = options.record_license
        self.params: dict[str, Any] = {}

    def build(self) -> tuple[str, dict[str, Any]]:
        con, d = self.con, self.descriptor
        self.loader.prefetch([d.core, *d.extensions])
        core = self.loader.load(d.core, "core")
        # Records without an id still count; give them one (it cannot be linked to, so no extension row matches it).
        occ_field = core.column("occurrenceID")
        fallback = f"nullif(trim({occ_field}), '')" if occ_field else "NULL"
        con.execute(f"UPDATE core SET _id = coalesce({fallback}, 'row-' || (rowid + 1)) WHERE _id IS NULL")
        self.report["records"] = core.rows
        self.report["duplicate_core_ids"] = con.execute("SELECT count(*) - count(DISTINCT _id) FROM core").fetchall()[
            0
        ][0]
        if self.report["duplicate_core_ids"]:
            log.warning(
                "%s: core rows repeating an id already used: %d", self.loader.where, self.report["duplicate_core_ids"]
            )

        core_is_record = d.core.kind not in _NON_RECORD_CORES
        media: list[_Entity] = []
        occ: _Entity | None = None
        verbatim: _Entity | None = None
        others: list[_Entity] = []
        for n, spec in enumerate(d.extensions):
            if d.core.id_index is None:
                raise SourceError(
                    f"{self.loader.where}: meta.xml declares extensions but the core has no <id index=...> to link them",
                    self.loader.where,
                )
            ent = self.loader.load(spec, f"ext{n}")
            orphans = con.execute(
                f"SELECT count(*) FROM ext{n} e WHERE NOT EXISTS (SELECT 1 FROM core c WHERE c._id = e._id)"
            ).fetchall()[0][0]
            if orphans:
                self.report["orphan_extension_rows"] += orphans
                self.report["orphans_by_file"][spec.label] = self.report["orphans_by_file"].get(spec.label, 0) + orphans
            if spec.row_type.strip().lower() in _MEDIA_ROW_TYPES:
                media.append(ent)
            elif spec.kind == _OCCURRENCE and not core_is_record and occ is None:
                occ = ent
            elif spec.kind == _OCCURRENCE and d.core.kind == _OCCURRENCE and verbatim is None:
                # a GBIF download's verbatim.txt: the same occurrences as the publisher wrote them
                verbatim = ent
            else:
                others.append(ent)

        self.media_cte = self._media_cte(core, media, occ)
        self.report["records_without_media"] = con.execute(
            self.media_cte
            + "SELECT count(*) FROM core c WHERE NOT EXISTS (SELECT 1 FROM media m WHERE m._coreid = c._id)",
            self._params_for(self.media_cte),
        ).fetchall()[0][0]
        aggs = self._build_aggregates(others)
        for ent in others:
            con.execute(f"DROP TABLE {ent.table}")
        self.verbatim = verbatim
        if verbatim is not None:
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE vb AS SELECT * FROM {verbatim.table} "
                "WHERE _id IS NOT NULL QUALIFY row_number() OVER (PARTITION BY _id ORDER BY rowid) = 1"
            )
        return self._final_query(core, occ, aggs, core_is_record)

    # media -------------------------------------------------------------------------------------

    def _media_cte(self, core: _Entity, media: list[_Entity], occ: _Entity | None) -> str:
        """``WITH`` clauses defining ``media``: one row per media item of every media extension
        (still images only) and, for records with none of those, per ``associatedMedia`` entry.

        A CTE rather than a table: the queries that use it read only the columns they need, and
        a million media rows are not copied. Its parameters are added to ``self.params``.
        """
        con, params = self.con, self.params
        cols = "_coreid, _orow, _src, _seq, url, alts, mformat, mlicense, mrights, mx"
        if occ is not None:
            occ_id = occ.column("occurrenceID")
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE occ_single AS SELECT _id AS _coreid, min(rowid) AS _orow "
                f"FROM {occ.table} GROUP BY _id HAVING count(*) = 1"
            )
            if occ_id:
                con.execute(
                    f"CREATE OR REPLACE TEMP TABLE occ_by_id AS SELECT _id AS _coreid, {occ_id} AS oid, min(rowid) AS _orow "
                    f"FROM {occ.table} WHERE {occ_id} IS NOT NULL GROUP BY ALL"
                )
        parts = []
        for n, ent in enumerate(media):
            roles = _media_role_columns(ent)
            params[f"src{n}"] = ent.spec.label
            url = _coalesce(roles["url"], "e") or "CAST(NULL AS VARCHAR)"
            mtype = _coalesce(roles["type"], "e")
            mformat = _coalesce(roles["format"], "e")
            is_image = ["TRUE"]
            if mtype:
                is_image.append(
                    f"({mtype} IS NULL OR (regexp_matches(lower({mtype}), '(image|photo|photograph)$') "
                    f"AND NOT regexp_matches(lower({mtype}), 'movingimage$')))"
                )
            if mformat:
                fmts = ", ".join(f"'{f}'" for f in _IMAGE_FORMATS)  # constants of ours, not data
                is_image.append(
                    f"({mformat} IS NULL OR lower({mformat}) LIKE 'image/%' OR lower({mformat}) IN ({fmts}))"
                )
            where = " AND ".join(is_image)
            self.report["non_image_media_rows"] += con.execute(
                f"SELECT count(*) FROM {ent.table} e WHERE NOT ({where})"
            ).fetchall()[0][0]
            used = {roles[r][0] for r in ("url", "format", "license", "rightsHolder", "occurrenceID") if roles[r]}
            extras = _unique_keys([("media:" + f.name, f"e.{col}") for f, col in ent.columns if col not in used])
            mx = json_object_sql(extras, params, f"m{n}k")
            orow, joins = "CAST(NULL AS BIGINT)", ""
            if occ is not None:
                joins, orow = " LEFT JOIN occ_single s ON s._coreid = e._id", "s._orow"
                if occ.column("occurrenceID") and roles["occurrenceID"]:
                    joins += f" LEFT JOIN occ_by_id b ON b._coreid = e._id AND b.oid = e.{roles['occurrenceID'][0]}"
                    orow = "coalesce(b._orow, s._orow)"
            parts.append(
                f"SELECT e._id AS _coreid, {orow} AS _orow, $src{n} AS _src, e.rowid + 1 AS _seq, {url} AS url, "
                f"{_alternatives(roles['url'], 'e')} AS alts, "
                f"{mformat or 'CAST(NULL AS VARCHAR)'} AS mformat, "
                f"{_coalesce(roles['license'], 'e') or 'CAST(NULL AS VARCHAR)'} AS mlicense, "
                f"{_coalesce(roles['rightsHolder'], 'e') or 'CAST(NULL AS VARCHAR)'} AS mrights, {mx} AS mx "
                f"FROM {ent.table} e{joins} WHERE {where}"
            )
        if not parts:
            parts.append(
                "SELECT CAST(NULL AS VARCHAR) AS _coreid, CAST(NULL AS BIGINT) AS _orow, CAST(NULL AS VARCHAR) AS _src, "
                "CAST(NULL AS BIGINT) AS _seq, CAST(NULL AS VARCHAR) AS url, CAST(NULL AS VARCHAR) AS alts, "
                "CAST(NULL AS VARCHAR) AS mformat, "
                "CAST(NULL AS VARCHAR) AS mlicense, CAST(NULL AS VARCHAR) AS mrights, CAST(NULL AS VARCHAR) AS mx WHERE FALSE"
            )
        ctes = [f"ext_media AS ({' UNION ALL '.join(parts)})"]
        # associatedMedia: only for records with no media row in any extension.
        assoc = []
        for maybe, orow in ((core, "CAST(NULL AS BIGINT)"), (occ, "t.rowid")):
            col = maybe.column("associatedMedia") if maybe is not None else None
            if maybe is None or col is None:
                continue
            ent = maybe
            params.update(assoc_comma=_ASSOC_COMMA, assoc_space=_ASSOC_SPACE, assoc_src="associatedMedia")
            split = (
                f"regexp_split_to_array(regexp_replace(regexp_replace(t.{col}, $assoc_comma, '|\\1', 'g'), "
                "$assoc_space, '|\\1', 'g'), '[|;]')"
            )
            assoc.append(
                f"SELECT _coreid, _orow, $assoc_src AS _src, _seq, nullif(trim(u), '') AS url, CAST(NULL AS VARCHAR) AS alts, "
                "CAST(NULL AS VARCHAR) AS mformat, "
                "CAST(NULL AS VARCHAR) AS mlicense, CAST(NULL AS VARCHAR) AS mrights, CAST(NULL AS VARCHAR) AS mx "
                f"FROM (SELECT t._id AS _coreid, {orow} AS _orow, t.rowid + 1 AS _seq, unnest({split}) AS u FROM {ent.table} t "
                f"WHERE t.{col} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM ext_media x WHERE x._coreid = t._id)) "
                "WHERE nullif(trim(u), '') IS NOT NULL"
            )
        if assoc:
            ctes.append(f"media AS (SELECT {cols} FROM ext_media UNION ALL {' UNION ALL '.join(assoc)})")
        else:
            ctes.append(f"media AS (SELECT {cols} FROM ext_media)")
        return "WITH " + ", ".join(ctes) + " "

    # one-to-many extensions ------------------------------------------------------------------

    def _build_aggregates(self, others: list[_Entity]) -> list[tuple[str, str, str | None]]:
        """Per core id, each other extension as a JSON list of objects (table, extra key, vernacular column)."""
        out = []
        taken: set[str] = set()
        for n, ent in enumerate(others):
            key = _local_name(ent.spec.row_type) or f"extension{n}"
            while key in taken:
                key += "_"
            taken.add(key)
            params: dict[str, Any] = {}
            pairs = _unique_keys([(f.name, col) for f, col in ent.columns])
            obj = json_object_sql(pairs, params, "a")
            vern = ent.column("vernacularName") if ent.spec.kind == "vernacularname" else None
            vern_sql = f", string_agg(DISTINCT {vern}, '; ') AS vn" if vern else ""
            self.con.execute(
                f"CREATE OR REPLACE TEMP TABLE agg{n} AS SELECT _id AS _coreid, "
                f"'[' || string_agg(coalesce({obj}, '{{}}'), ',') || ']' AS j{vern_sql} "
                f"FROM {ent.table} WHERE _id IS NOT NULL GROUP BY _id",
                params,
            )
            out.append((f"agg{n}", key, "vn" if vern else None))
        return out

    # the output ----------------------------------------------------------------------------------

    def _final_query(
        self, core: _Entity, occ: _Entity | None, aggs, core_is_record: bool
    ) -> tuple[str, dict[str, Any]]:
        params = self.params
        params["name"] = self.name
        record_cols: dict[str, list[str]] = {}  # canonical column -> expressions in precedence order
        extra_pairs: list[tuple[str, str]] = []
        extra_index: dict[str, int] = {}

        def add(ent: _Entity, alias: str, first: bool) -> None:
            for f, col in ent.columns:
                canon = canonical_column(f.term)
                expr = f"{alias}.{col}"
                if canon is not None and canon not in _NOT_RECORD_COLUMNS:
                    exprs = record_cols.setdefault(canon, [])
                    # the occurrence is more specific than its taxon/event: it goes first
                    exprs.insert(0, expr) if first else exprs.append(expr)
                    continue
                key = f.name
                if key in extra_index:
                    i = extra_index[key]
                    old_key, old_expr = extra_pairs[i]
                    extra_pairs[i] = (
                        old_key,
                        f"coalesce({expr}, {old_expr})" if first else f"coalesce({old_expr}, {expr})",
                    )
                else:
                    extra_index[key] = len(extra_pairs)
                    extra_pairs.append((key, expr))

        add(core, "c", first=False)
        if occ is not None:
            add(occ, "o", first=True)
        if core_is_record:
            # In an Occurrence core the id is the occurrence's identifier (unless we made it up).
            record_cols.setdefault("occurrenceID", []).append(
                "CASE WHEN c._id <> 'row-' || (c.rowid + 1) THEN c._id END"
            )

        selects = [
            "CASE WHEN m.url IS NULL THEN $name || '#' || m._coreid || '#' || m._src || ':' || m._seq "
            "ELSE $name || '#' || m._coreid || '#' || m.url END AS key",
            "m.url AS location",
            "CAST(NULL AS BIGINT) AS size",
            "CAST(NULL AS DOUBLE) AS mtime",
            "CASE WHEN m.url IS NULL THEN 'no-media-url' END AS error_reason",
            "CASE WHEN m.url IS NULL THEN 'media row ' || m._seq || ' of ' || m._src || ' (record ' || m._coreid "
            "|| ') has no URL' END AS error_detail",
            "m._coreid AS recordID",
            "m.alts AS alt_locations",
        ]
        values: dict[str, str] = {}
        extra_pairs += self._record_rights(record_cols)
        gbif = core.column("gbifID")
        if gbif is not None:
            # A GBIF download: the occurrence's page on GBIF, when the record names no page of its own.
            values["_gbif_page"] = (
                f"CASE WHEN regexp_full_match(trim(c.{gbif}), '[0-9]+') "
                f"THEN 'https://www.gbif.org/occurrence/' || trim(c.{gbif}) END"
            )
            record_cols.setdefault("references", []).append(values["_gbif_page"])
        for canon in DWC_COLUMNS:
            if canon in ("recordID", "mediaURL", "mediaFormat"):
                continue
            exprs = list(record_cols.get(canon, []))
            if canon == "license":
                exprs = ["m.mlicense"] + (exprs if self.record_license else [])
            elif canon == "rightsHolder":
                exprs.insert(0, "m.mrights")
            if canon == "vernacularName":
                exprs += [f"{t}.{v}" for t, _, v in aggs if v]
            if not exprs:
                continue
            value = exprs[0] if len(exprs) == 1 else f"coalesce({', '.join(exprs)})"
            values[canon] = value
            selects.append(f"{value} AS {quote_ident(canon)}")
        selects += ["m.url AS mediaURL", "m.mformat AS mediaFormat", f"{self._verbatim_sql(values)} AS verbatim"]

        # Members of the record's terms, then the media row's ("media:" keys) and one list per other
        # extension: keys cannot clash, so the object is assembled as text (see json_object_text_sql).
        members = json_members_sql(_unique_keys(extra_pairs), params, "x")
        members.append(object_members_sql("m.mx"))
        joins = ["JOIN core c ON c._id = m._coreid"]
        if occ is not None:
            joins.append(f"LEFT JOIN {occ.table} o ON o.rowid = m._orow")
        if self.verbatim is not None:
            joins.append("LEFT JOIN vb ON vb._id = m._coreid")
        for n, (table, key, _) in enumerate(aggs):
            params[f"g{n}"] = json.dumps(key, ensure_ascii=False) + ":"
            joins.append(f"LEFT JOIN {table} ON {table}._coreid = m._coreid")
            members.append(f"($g{n} || {table}.j)")
        extra = json_object_text_sql(members)
        selects.append(f"{extra} AS extra")

        body = f"{self.media_cte}SELECT {', '.join(selects)} FROM media m {' '.join(joins)}"
        # A cheap screen first (distinct 64-bit hashes of the media rows' keys; a collision only
        # costs the exact count below), then the exact count through the join when it may matter.
        cte, cte_params = self.media_cte, self._params_for(self.media_cte)
        maybe = (
            self.report["duplicate_core_ids"] > 0
            or self.con.execute(
                cte + "SELECT count(*) > count(DISTINCT hash(_coreid, coalesce(url, _src || ':' || _seq))) FROM media",
                cte_params,
            ).fetchall()[0][0]
        )
        dup = 0
        if maybe:
            dup = self.con.execute(
                cte
                + "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM media m JOIN core c ON c._id = m._coreid "
                "GROUP BY m._coreid, coalesce(m.url, m._src || ':' || m._seq) HAVING count(*) > 1)",
                cte_params,
            ).fetchall()[0][0]
        self.report["duplicate_media_rows"] = int(dup)
        if dup:
            body += " QUALIFY row_number() OVER (PARTITION BY key ORDER BY m._src, m._seq) = 1"
        return body, self._params_for(body)

    def _record_rights(self, record_cols: dict[str, list[str]]) -> list[tuple[str, str]]:
        """Extra members for the record's own licence: an image's licence is its media row's, so the
        record's goes to ``record:license`` (with ``record_license``, it also fills in for images
        without one, which then say ``licenseFrom: record``)."""
        lic = record_cols.get("license")
        if not lic:
            return []
        value = lic[0] if len(lic) == 1 else f"coalesce({', '.join(lic)})"
        if self.record_license:
            return [("licenseFrom", f"CASE WHEN m.mlicense IS NULL AND {value} IS NOT NULL THEN 'record' END")]
        return [("record:license", value)]

    def _verbatim_sql(self, values: dict[str, str]) -> str:
        """The ``verbatim`` JSON object: a GBIF download's verbatim.txt values that differ from the
        interpreted ones, and ``"references": null`` when the GBIF page filled it in."""
        members: list[str] = []
        if "_gbif_page" in values and "references" in values:
            members.append(f"CASE WHEN {values['references']} = {values['_gbif_page']} THEN '\"references\":null' END")
        seen: set[str] = set()
        for f, col in self.verbatim.columns if self.verbatim is not None else []:
            canon = canonical_column(f.term)
            # the record's licence and rights holder are not the image's: not compared
            if (
                canon is None
                or canon in seen
                or canon in ("references", "license", "rightsHolder", *_NOT_RECORD_COLUMNS)
            ):
                continue
            seen.add(canon)
            value = values.get(canon, "CAST(NULL AS VARCHAR)")
            members.append(
                f"CASE WHEN vb.{col} IS NOT NULL AND vb.{col} IS DISTINCT FROM {value} "
                f"THEN '{json.dumps(canon)}:' || to_json(vb.{col}) END"
            )
        return json_object_text_sql(members)

    def _params_for(self, sql: str) -> dict[str, Any]:
        """The parameters ``sql`` uses (DuckDB refuses unused ones)."""
        return {k: v for k, v in self.params.items() if re.search(rf"\${re.escape(k)}\b", sql)}


def _unique_keys(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Pairs with duplicate keys merged (the first non-null value wins)."""
    merged: dict[str, list[str]] = {}
    for key, expr in pairs:
        merged.setdefault(key, []).append(expr)
    return [(k, v[0] if len(v) == 1 else f"coalesce({', '.join(v)})") for k, v in merged.items()]
