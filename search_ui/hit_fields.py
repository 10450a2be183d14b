"""What a result shows: its name and authorship, rank, date, card fields, the detail view's fields
in reading order, the table's rows, the link to its source record."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from indexer.locations import file_name
from indexer.store.schema import RANK_COLUMNS, RANKS

__all__ = [
    "split_name",
    "key_facts",
    "hit_rank",
    "hit_taxon_name",
    "hit_date",
    "card_fields",
    "result_rows",
    "detail_fields",
    "source_record_url",
    "license_link",
    "as_published",
    "image_label",
    "alt_text",
    "when",
]


def split_name(name: str) -> tuple[str, str]:
    """``("Felis catus", "Linnaeus, 1758")`` from ``"Felis catus Linnaeus, 1758"``: the name (shown
    in italics) and its authorship (not). The name is the first word and the lower-case words
    after it (epithets, ``subsp.``); the authorship starts at the first word that is capitalised,
    parenthesised or a number."""
    words = str(name).split()
    if not words:
        return "", ""
    cut = 1
    while cut < len(words) and words[cut][:1].islower():
        cut += 1
    return " ".join(words[:cut]), " ".join(words[cut:])


def key_facts(hit) -> list[str]:
    """The lines a curator reads first about a specimen: catalogue number, institution and
    collection, basis of record and type status; date and collector; place; coordinates."""
    m = hit.metadata

    def join(*vals, sep=" · "):
        return sep.join(str(v) for v in vals if v is not None and str(v).strip() != "")

    place = join(m.get("locality"), m.get("stateProvince"), m.get("country") or m.get("countryCode"), sep=", ")
    coords = ""
    lat, lon = m.get("decimalLatitude"), m.get("decimalLongitude")
    if lat is not None and lon is not None and str(lat) != "" and str(lon) != "":
        coords = f"{lat}, {lon}"
    lines = [
        join(
            m.get("catalogNumber"),
            join(m.get("institutionCode"), m.get("collectionCode"), sep=" "),
            m.get("basisOfRecord"),
            m.get("typeStatus"),
        ),
        join(
            hit_date(hit),
            f"recorded by {m['recordedBy']}" if m.get("recordedBy") else None,
            f"identified by {m['identifiedBy']}" if m.get("identifiedBy") else None,
        ),
        place,
        coords,
    ]
    return [line for line in lines if line]


def hit_rank(hit) -> str | None:
    """The rank the record is identified to: ``taxonRank`` when given, else the lowest rank
    present in its lineage."""
    meta = hit.metadata
    declared = meta.get("taxonRank")
    if declared:
        return str(declared).lower()
    if hit_taxon_name(hit, "species"):
        return "species"
    for rank, col in zip(reversed(RANKS[:-1]), reversed(RANK_COLUMNS[:-1])):
        if meta.get(col):
            return rank
    return None


def hit_taxon_name(hit, rank: str) -> str | None:
    """The record's taxon at ``rank`` (a binomial for species), or None."""
    meta = hit.metadata
    if rank == "species":
        genus, epithet = meta.get("genus"), meta.get("specificEpithet")
        if genus and epithet:
            return f"{genus} {epithet}"
        sci = (meta.get("scientificName") or "").split()
        if len(sci) >= 2 and sci[0][:1].isupper() and sci[1][:1].islower() and (not genus or genus == sci[0]):
            return f"{sci[0]} {sci[1]}"
        return None
    value = meta.get(RANK_COLUMNS[RANKS.index(rank)])
    if value:
        return str(value)
    if rank == "genus":
        sci = (meta.get("scientificName") or "").split()
        if sci and sci[0][:1].isupper():
            return sci[0]
    return None


def hit_date(hit) -> str | None:
    meta = hit.metadata
    if meta.get("eventDate"):
        return str(meta["eventDate"])
    if meta.get("year") is not None:
        return str(meta["year"])
    return None


def card_fields(hit, *, scored: bool = True) -> dict[str, Any]:
    """What a result card shows: name (italic in the page), rank, catalog number, institution,
    date, score (None when the result is a listing, not a similarity search)."""
    return {
        "id": hit.id,
        "name": hit.scientific_name or hit.metadata.get("vernacularName") or "(unnamed)",
        "named": bool(hit.scientific_name),
        "vernacular": hit.metadata.get("vernacularName"),
        "rank": hit_rank(hit),
        "catalogNumber": hit.metadata.get("catalogNumber"),
        "institution": hit.metadata.get("institutionCode"),
        "date": hit_date(hit),
        "score": float(hit.score) if scored else None,
        "file": image_label(hit),
    }


def result_rows(hits: Sequence, media=None, *, scored: bool = True) -> list[dict[str, Any]]:
    """Rows of the table view."""
    rows = []
    for h in hits:
        c = card_fields(h, scored=scored)
        rows.append(
            {
                "id": h.id,
                "score": round(c["score"], 4) if c["score"] is not None else None,
                "scientificName": h.scientific_name,
                "rank": c["rank"],
                "catalogNumber": c["catalogNumber"],
                "institutionCode": c["institution"],
                "date": c["date"],
                "country": h.metadata.get("country"),
                "license": h.metadata.get("license"),
                "media": media.link(h) if media is not None else h.location,
            }
        )
    return rows


_DETAIL_ORDER = (
    "scientificName",
    "vernacularName",
    "taxonRank",
    *RANK_COLUMNS,
    "infraspecificEpithet",
    "typeStatus",
    "identifiedBy",
    "catalogNumber",
    "recordID",
    "occurrenceID",
    "institutionCode",
    "collectionCode",
    "basisOfRecord",
    "eventDate",
    "year",
    "recordedBy",
    "country",
    "countryCode",
    "stateProvince",
    "locality",
    "decimalLatitude",
    "decimalLongitude",
    "license",
    "rightsHolder",
    "references",
    "mediaURL",
    "mediaFormat",
    "id",
    "source",
    "location",
    "width",
    "height",
    "size",
    "sha256",
    "indexed_at",
)
_DETAIL_HIDDEN = {"meta_hash", "key", "mtime", "extra", "verbatim", "meta_version"}


def as_published(hit) -> dict[str, Any]:
    """What the publisher wrote for each field the build normalised or filled (``verbatim``;
    None: the publisher gave nothing)."""
    raw = hit.metadata.get("verbatim")
    if not raw:
        return {}
    try:
        obj = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except (ValueError, TypeError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _with_original(name: str, value: Any, published: dict[str, Any]) -> str:
    text = _text(value)
    if name not in published:
        return text
    original = published[name]
    if original is None or str(original) == "":
        return f"{text} (filled in: the publisher gave none)"
    return f"{text} (as published: {_text(original)})"


def detail_fields(hit) -> list[tuple[str, str]]:
    """Every non-empty metadata field of a hit, in a reading order (taxon, specimen, event,
    rights, file), then the source's own extra fields. A field the build normalised says what the
    publisher wrote ("PreservedSpecimen (as published: PRESERVED_SPECIMEN)")."""
    meta = dict(hit.metadata)
    published = as_published(hit)
    out: list[tuple[str, str]] = []
    seen = set()
    for name in _DETAIL_ORDER:
        seen.add(name)
        v = meta.get(name)
        if v is not None and str(v) != "":
            out.append((name, _with_original(name, v, published)))
    for name in sorted(meta):
        if name in seen or name in _DETAIL_HIDDEN:
            continue
        v = meta.get(name)
        if v is not None and str(v) != "":
            out.append((name, _with_original(name, v, published)))
    extra = meta.get("extra")
    if extra:
        try:
            obj = json.loads(extra) if isinstance(extra, str) else dict(extra)
        except (ValueError, TypeError):
            obj = {"extra": extra}
        if isinstance(obj, dict):
            for k in sorted(obj):
                if obj[k] is not None and str(obj[k]) != "":
                    out.append((str(k), _text(obj[k])))
    return out


def _text(v: Any) -> str:
    if hasattr(v, "isoformat"):
        return when(v)
    return str(v)


_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".gif", ".bmp", ".heic", ".jp2")


def image_label(hit) -> str:
    """A short name for a result's image: its file name when the location ends in one
    (``img_05.png``), else the record's title or catalogue number with the host it comes from
    (``MUS-0012 · images.example.org``): a URL's last segment ("preview", "full") names nothing."""
    m = hit.metadata
    location = str(m.get("mediaURL") or hit.location or "")
    name = file_name(location)
    if name.lower().endswith(_IMAGE_SUFFIXES):
        return name
    host = ""
    if "://" in location:
        host = location.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    title = m.get("title") or m.get("catalogNumber") or m.get("occurrenceID") or f"image {hit.id}"
    return " · ".join(str(x) for x in (title, host) if x)


def alt_text(hit) -> str:
    """The alternative text of a result's image: what it shows (the scientific name, else the
    common name), and its catalogue number."""
    m = hit.metadata
    what = hit.scientific_name or m.get("vernacularName") or "Unnamed specimen"
    cat = m.get("catalogNumber")
    return f"{what}, catalogue number {cat}" if cat else f"{what}, image {hit.id}"


def when(v: Any) -> str:
    """A timestamp as a curator reads it: ``2026-12-02 01:44 UTC`` (no seconds' fractions, no
    ``T``); a date as ``2026-12-02``; a text that is an ISO timestamp is read first."""
    import datetime as dt

    if isinstance(v, str):
        text = v.strip()
        try:
            v = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return text
    if isinstance(v, dt.datetime):
        if v.tzinfo is not None:
            v = v.astimezone(dt.timezone.utc)
            return v.strftime("%Y-%m-%d %H:%M UTC")
        return v.strftime("%Y-%m-%d %H:%M")
    if isinstance(v, dt.date):
        return v.isoformat()
    return str(v)


def license_link(hit) -> tuple[str, str | None] | None:
    """(the licence as shown, its page or None) of a hit, or None when it has none recorded."""
    from indexer.dwc import license_url

    lic = hit.metadata.get("license")
    if not lic:
        return None
    return str(lic), license_url(str(lic))


def source_record_url(hit) -> str | None:
    """A link to the source record: ``references``, else an ``occurrenceID`` that is an http(s)
    URL. Nothing else is ever linked (no ``javascript:`` or file URLs from metadata)."""
    for name in ("references", "occurrenceID"):
        v = hit.metadata.get(name)
        if isinstance(v, str) and v.strip().lower().startswith(("http://", "https://")):
            return v.strip()
    return None
