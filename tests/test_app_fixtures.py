"""A small collection for the app's tests: generated pictures with rich Darwin Core labels.

Not tests itself; ``tests/test_app*.py``, ``test_search_ui.py``, ``test_media_library.py`` and
``test_browser.py`` build it with :func:`build_app_collection` (once per module).

Every picture is different (a tint per taxon, random blocks per image), so with the tiny random
model an image searched by its own pixels comes back first with score ~1; nothing relies on the
random model understanding text.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

#: (kingdom, phylum, class, order, family, genus, specificEpithet, vernacularName, collectionCode)
TAXA = [
    ("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Corvus", "corax", "common raven", "BIRDS"),
    ("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Pica", "pica", "Eurasian magpie", "BIRDS"),
    ("Animalia", "Chordata", "Mammalia", "Carnivora", "Canidae", "Vulpes", "vulpes", "red fox", "MAMMALS"),
    (
        "Plantae",
        "Tracheophyta",
        "Magnoliopsida",
        "Rosales",
        "Rosaceae",
        "Rosa",
        "canina",
        "dog rose",
        'PLANTS & "SEEDS"',
    ),
]
TINTS = [(200, 40, 40), (40, 40, 200), (220, 140, 30), (40, 170, 60)]
COUNTRIES = ["Kenya", "Norway", "Côte d'Ivoire"]
N_IMAGES = 12


def picture(i: int, size: tuple[int, int] = (128, 96)) -> Image.Image:
    """Image ``i``: its taxon's tint blended with random blocks unique to ``i``."""
    rng = np.random.default_rng(1000 + i)
    cells = rng.integers(3, 9, size=2)
    blocks = rng.integers(0, 256, size=(int(cells[1]), int(cells[0]), 3)).astype(np.float32)
    tint = np.array(TINTS[i % len(TAXA)], dtype=np.float32)
    mixed = (0.5 * blocks + 0.5 * tint).clip(0, 255).astype(np.uint8)
    return Image.fromarray(mixed).resize(size, Image.NEAREST)


def picture_bytes(i: int, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    picture(i).save(buf, format=fmt)
    return buf.getvalue()


def label_row(i: int, relpath: str) -> dict[str, str]:
    k, p, c, o, f, g, s, vern, code = TAXA[i % len(TAXA)]
    year = 1900 + 10 * i
    row = {
        "path": relpath,
        "scientificName": f"{g} {s}",
        "kingdom": k,
        "phylum": p,
        "class": c,
        "order": o,
        "family": f,
        "genus": g,
        "specificEpithet": s,
        "vernacularName": vern,
        "catalogNumber": f"MUS-{i:03d}",
        "recordID": "REC-A" if i in (0, 4) else f"REC-{i}",
        "occurrenceID": f"https://example.org/occurrence/{i}" if i % 2 == 0 else f"urn:catalog:MUS:{i}",
        "institutionCode": "NHM" if i < 6 else "MZB",
        "collectionCode": code,
        "basisOfRecord": "PreservedSpecimen" if i % 2 == 0 else "HumanObservation",
        "license": "CC-BY-4.0" if i % 3 else "CC0-1.0",
        "rightsHolder": "Test Museum",
        "year": str(year),
        "eventDate": f"{year}-05-{1 + i % 9:02d}",
        "country": COUNTRIES[i % 3],
        "decimalLatitude": "" if i % 3 == 2 else f"{-1.5 + i:.2f}",
        "decimalLongitude": "" if i % 3 == 2 else f"{36.0 + i:.2f}",
        "references": f"https://example.org/record/{i}" if i == 0 else "",
        "notes": f"note for image {i}",
    }
    return row


def make_images(folder: Path, n: int = N_IMAGES) -> Path:
    """Write the pictures, a labels CSV and one file that is not an image; return labels.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        rel = f"{'birds' if i % 4 < 2 else 'other'}/img_{i:02d}.png"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        picture(i).save(folder / rel)
        rows.append(label_row(i, rel))
    (folder / "other" / "broken.jpg").write_bytes(b"this is not a picture at all")
    labels = folder.parent / f"{folder.name}-labels.csv"
    with open(labels, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return labels


@dataclass
class AppCollection:
    path: Path
    images: Path
    labels: Path
    model_source: str

    def image_path(self, i: int) -> Path:
        return self.images / f"{'birds' if i % 4 < 2 else 'other'}/img_{i:02d}.png"


def build_app_collection(base: Path, tiny_model_dir: Path, n: int = N_IMAGES) -> AppCollection:
    """Build the test collection under ``base`` (images in ``base/images``, collection in
    ``base/app.coll``) with the tiny model; the ANN index is built when the ANN module is there."""
    from indexer.build import BuildOptions, build
    from indexer.build.sources import FolderSource

    images = base / "images"
    labels = make_images(images, n)
    try:
        import indexer.ann  # noqa: F401

        build_index = True
    except ImportError:
        build_index = False
    path = base / "app.coll"
    source = f"local-dir:{tiny_model_dir}"
    build(
        path,
        [FolderSource(images, labels=labels)],
        model_name=source,
        device="cpu",
        options=BuildOptions(build_index=build_index, workers=0),
    )
    return AppCollection(path, images, labels, source)
