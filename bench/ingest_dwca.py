"""Benchmark: metadata ingestion of a generated Darwin Core Archive (images are not fetched or decoded).

Generates a GBIF-style archive (tab-separated occurrence core with N records and a GBIF Simple
Multimedia extension with N media rows, zipped), scans it with ``DwcaSource`` and prints rows per
second and peak memory, against a baseline measured in the same run: DuckDB reading the same two
files with ``read_csv`` (no join, no mapping). Each measurement runs in its own process, so its
peak RSS (``getrusage`` high-water mark) is its own. It runs a quarter-size archive as well, to
show whether memory grows with the archive beyond the metadata itself.

    python bench/ingest_dwca.py                # 250K and 1M records
    python bench/ingest_dwca.py --rows 100000  # quick: 25K and 100K
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import zipfile

META = """<?xml version="1.0" encoding="UTF-8"?>
<archive xmlns="http://rs.tdwg.org/dwc/text/" metadata="eml.xml">
  <core encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy="" ignoreHeaderLines="1"
        rowType="http://rs.tdwg.org/dwc/terms/Occurrence">
    <files><location>occurrence.txt</location></files>
    <id index="0"/>
{core_fields}
  </core>
  <extension encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy="" ignoreHeaderLines="1"
        rowType="http://rs.gbif.org/terms/1.0/Multimedia">
    <files><location>multimedia.txt</location></files>
    <coreid index="0"/>
{media_fields}
  </extension>
</archive>
"""

DWC = "http://rs.tdwg.org/dwc/terms/"
DC = "http://purl.org/dc/terms/"

#: (term URI, SQL expression over i) for the occurrence core; index 0 is the id.
CORE = [
    (DWC + "occurrenceID", "'urn:catalog:NHMUK:' || i"),
    (DWC + "catalogNumber", "'BMNH ' || (1000000 + i)"),
    (DWC + "institutionCode", "'NHMUK'"),
    (DWC + "collectionCode", "'ZOO'"),
    (DWC + "basisOfRecord", "'PreservedSpecimen'"),
    (DWC + "scientificName", "'Genus' || (i % 5000) || ' species' || (i % 13) || ' Author, 1850'"),
    (DWC + "taxonRank", "'species'"),
    (DWC + "kingdom", "'Animalia'"),
    (DWC + "phylum", "'Chordata'"),
    (DWC + "class", "'Aves'"),
    (DWC + "order", "'Order' || (i % 40)"),
    (DWC + "family", "'Family' || (i % 400)"),
    (DWC + "genus", "'Genus' || (i % 5000)"),
    (DWC + "specificEpithet", "'species' || (i % 13)"),
    (DWC + "eventDate", "'19' || lpad(CAST(i % 100 AS VARCHAR), 2, '0') || '-05-17'"),
    (DWC + "year", "CAST(1900 + i % 100 AS VARCHAR)"),
    (DWC + "country", "'United Kingdom'"),
    (DWC + "countryCode", "'GB'"),
    (DWC + "stateProvince", "'England'"),
    (DWC + "locality", "'Tring, Hertfordshire, plot ' || (i % 977)"),
    (DWC + "decimalLatitude", "CAST(round(51.0 + (i % 1000) / 1000.0, 5) AS VARCHAR)"),
    (DWC + "decimalLongitude", "CAST(round(-0.66 - (i % 1000) / 1000.0, 5) AS VARCHAR)"),
    (DWC + "recordedBy", "'Collector ' || (i % 700)"),
    (DWC + "identifiedBy", "'Curator ' || (i % 50)"),
    (DC + "license", "'http://creativecommons.org/licenses/by/4.0/'"),
    (DWC + "preparations", "'skin'"),
    (DWC + "habitat", "'woodland edge'"),
    (DWC + "dynamicProperties", '\'{"barcode": "\' || (10000000 + i) || \'", "project": "digitisation"}\''),
]
MEDIA = [
    (DC + "identifier", "'https://media.example.org/asset/' || md5(CAST(i AS VARCHAR)) || '/contents/preview'"),
    (DC + "type", "'StillImage'"),
    (DC + "format", "'image/jpeg'"),
    (DC + "license", "'http://creativecommons.org/licenses/by/4.0/'"),
    (DC + "rightsHolder", "'The Trustees of the Natural History Museum, London'"),
    (DC + "title", "'NHMUK_' || i || '_dorsal'"),
]


def generate(rows: int, folder: str) -> dict:
    """Write occurrence.txt, multimedia.txt, meta.xml (and a zip of them) under ``folder``."""
    import duckdb

    t0 = time.perf_counter()
    os.makedirs(folder, exist_ok=True)
    con = duckdb.connect()
    core_cols = ", ".join(f"{expr} AS c{n + 1}" for n, (_, expr) in enumerate(CORE))
    media_cols = ", ".join(f"{expr} AS m{n + 1}" for n, (_, expr) in enumerate(MEDIA))
    # Constants of this script only: the numbers and paths are ours, not data, so formatting is safe.
    con.execute(
        f"COPY (SELECT 'occ-' || i AS id, {core_cols} FROM range({int(rows)}) t(i)) "
        f"TO '{os.path.join(folder, 'occurrence.txt')}' (HEADER, DELIMITER '\t', QUOTE '', ESCAPE '')"
    )
    con.execute(
        f"COPY (SELECT 'occ-' || i AS coreid, {media_cols} FROM range({int(rows)}) t(i)) "
        f"TO '{os.path.join(folder, 'multimedia.txt')}' (HEADER, DELIMITER '\t', QUOTE '', ESCAPE '')"
    )
    con.close()
    fields = lambda cols: "\n".join(f'    <field index="{n + 1}" term="{t}"/>' for n, (t, _) in enumerate(cols))  # noqa: E731
    with open(os.path.join(folder, "meta.xml"), "w") as fh:
        fh.write(META.format(core_fields=fields(CORE), media_fields=fields(MEDIA)))
    with open(os.path.join(folder, "eml.xml"), "w") as fh:
        fh.write("<eml:eml xmlns:eml='eml://ecoinformatics.org/eml-2.1.1'/>")
    t1 = time.perf_counter()
    archive = os.path.join(folder, "archive.zip")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name in ("meta.xml", "eml.xml", "occurrence.txt", "multimedia.txt"):
            zf.write(os.path.join(folder, name), name)
    t2 = time.perf_counter()
    text_bytes = sum(os.path.getsize(os.path.join(folder, n)) for n in ("occurrence.txt", "multimedia.txt"))
    return {
        "rows": rows,
        "generate_s": t1 - t0,
        "zip_s": t2 - t1,
        "text_mb": text_bytes / 1e6,
        "zip_mb": os.path.getsize(archive) / 1e6,
    }


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _cpu_s() -> float:
    """CPU seconds of this process, all threads (DuckDB's too): comparable when the machine is busy."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child_scan(folder: str) -> dict:
    """Scan the zipped archive with DwcaSource (in this process only)."""
    from indexer.build.sources.dwca import DwcaSource

    before = _rss_mb()
    cpu0 = _cpu_s()
    t0 = time.perf_counter()
    src = DwcaSource(os.path.join(folder, "archive.zip"))
    rows = arrow_bytes = batches = max_batch = 0
    for batch in src.scan():
        rows += batch.num_rows
        arrow_bytes += batch.nbytes
        batches += 1
        max_batch = max(max_batch, batch.num_rows)
    seconds = time.perf_counter() - t0
    return {
        "rows": rows,
        "seconds": seconds,
        "cpu_s": _cpu_s() - cpu0,
        "arrow_mb": arrow_bytes / 1e6,
        "batches": batches,
        "max_batch": max_batch,
        "rss_before_mb": before,
        "peak_rss_mb": _rss_mb(),
        "errors": src.report.get("error_rows"),
    }


def child_baseline(folder: str) -> dict:
    """The floor: DuckDB parsing the same two (already extracted) files into Arrow batches."""
    import duckdb

    before = _rss_mb()
    cpu0 = _cpu_s()
    t0 = time.perf_counter()
    con = duckdb.connect()
    rows = 0
    for name in ("occurrence.txt", "multimedia.txt"):
        reader = con.sql(
            "SELECT * FROM read_csv($f, delim='\t', quote='', header=true, all_varchar=true)",
            params={"f": os.path.join(folder, name)},
        ).to_arrow_reader(50_000)
        for batch in reader:
            rows += batch.num_rows if name == "multimedia.txt" else 0
    con.close()
    return {
        "rows": rows,
        "seconds": time.perf_counter() - t0,
        "cpu_s": _cpu_s() - cpu0,
        "rss_before_mb": before,
        "peak_rss_mb": _rss_mb(),
    }


def _run_child(kind: str, folder: str) -> dict:
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), f"--child-{kind}", folder],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="occurrences (= media rows) of the larger archive")
    ap.add_argument("--workdir", default=None, help="where to generate (default: a temporary folder, removed after)")
    ap.add_argument("--child-scan", metavar="DIR", help=argparse.SUPPRESS)
    ap.add_argument("--child-baseline", metavar="DIR", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_scan:
        print(json.dumps(child_scan(args.child_scan)))
        return
    if args.child_baseline:
        print(json.dumps(child_baseline(args.child_baseline)))
        return

    sizes = [max(1, args.rows // 4), args.rows]
    tmp = tempfile.TemporaryDirectory(prefix="bench-dwca-", dir=args.workdir)
    results = []
    try:
        for rows in sizes:
            folder = os.path.join(tmp.name, f"n{rows}")
            gen = generate(rows, folder)
            scan = _run_child("scan", folder)
            base = _run_child("baseline", folder)
            results.append((gen, scan, base))
            for name in ("occurrence.txt", "multimedia.txt", "archive.zip"):
                os.unlink(os.path.join(folder, name))
    finally:
        tmp.cleanup()

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"Darwin Core Archive ingestion (occurrence core + GBIF Multimedia, zipped); cpus={os.cpu_count()}, "
        f"load average at the end {load} (other work on the machine slows wall-clock figures; CPU seconds less so)"
    )
    for gen, scan, base in results:
        rate = scan["rows"] / scan["seconds"]
        base_rate = base["rows"] / base["seconds"]
        grown = scan["peak_rss_mb"] - scan["rss_before_mb"]
        print(
            f"\n{gen['rows']:>9,} records, {gen['rows']:,} media rows: text {gen['text_mb']:.0f} MB, zip {gen['zip_mb']:.0f} MB "
            f"(generated in {gen['generate_s']:.1f} s, zipped in {gen['zip_s']:.1f} s)"
        )
        print(
            f"  scan      {scan['rows']:>9,} image rows in {scan['seconds']:6.2f} s = {rate:>9,.0f} rows/s "
            f"({scan['cpu_s']:.1f} CPU s = {scan['rows'] / scan['cpu_s']:,.0f} rows per CPU s; "
            f"{scan['batches']} batches, largest {scan['max_batch']:,} rows, {scan['errors']} error rows)"
        )
        print(
            f"  baseline  DuckDB read_csv of the same two files: {base['seconds']:6.2f} s = {base_rate:>9,.0f} media rows/s "
            f"({base['cpu_s']:.1f} CPU s); scan/baseline: speed {rate / base_rate:.2f}, CPU {scan['cpu_s'] / base['cpu_s']:.1f}x"
        )
        print(
            f"  memory    peak RSS {scan['peak_rss_mb']:,.0f} MB (start {scan['rss_before_mb']:,.0f} MB, +{grown:,.0f} MB); "
            f"output metadata (Arrow) {scan['arrow_mb']:,.0f} MB; growth / metadata = {grown / max(scan['arrow_mb'], 1e-9):.2f}; "
            f"baseline peak RSS {base['peak_rss_mb']:,.0f} MB"
        )
    if len(results) == 2:
        (g1, s1, _), (g2, s2, _) = results
        r1 = (s1["peak_rss_mb"] - s1["rss_before_mb"]) / max(s1["arrow_mb"], 1e-9)
        r2 = (s2["peak_rss_mb"] - s2["rss_before_mb"]) / max(s2["arrow_mb"], 1e-9)
        print(
            f"\nmemory growth per MB of metadata: {r1:.2f} at {g1['rows']:,} rows, {r2:.2f} at {g2['rows']:,} rows "
            f"(flat = memory grows with the metadata only); target >= 100,000 rows/s: "
            f"{'met' if s2['rows'] / s2['seconds'] >= 100_000 else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
