"""Generated test images: distinct, reproducible pictures with Darwin Core labels."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

#: (kingdom, phylum, class, order, family, genus, specificEpithet, vernacularName)
TAXA = [
    ("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Corvus", "corax", "common raven"),
    ("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Corvus", "corone", "carrion crow"),
    ("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Pica", "pica", "Eurasian magpie"),
    ("Animalia", "Chordata", "Mammalia", "Carnivora", "Felidae", "Felis", "catus", "domestic cat"),
    ("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Rosaceae", "Rosa", "canina", "dog rose"),
]
COUNTRIES = ["Kenya", "Tanzania", "United Kingdom", "Sweden"]


def picture(seed: int, size: tuple[int, int] = (96, 80)) -> Image.Image:
    """A picture unlike any other seed's: blocks of random colours at a random scale."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(2, 9, size=2)
    small = rng.integers(0, 256, size=(cells[1], cells[0], 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.NEAREST)


def make_folder(root: Path, n: int, *, start: int = 0, labels: bool = True, fmt: str = "png") -> Path:
    """Write ``n`` images under ``root`` (in two sub-folders) and, if asked, ``root/labels.csv``.

    Image i has taxon TAXA[i % len(TAXA)], catalogNumber CAT-i, country COUNTRIES[i % 4],
    year 1900 + 10 * (i % 12), coordinates on even i.
    """
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(start, start + n):
        sub = "a" if i % 2 == 0 else "b"
        rel = f"{sub}/img_{i:04d}.{fmt}"
        (root / sub).mkdir(exist_ok=True)
        picture(i).save(root / rel)
        t = TAXA[i % len(TAXA)]
        rows.append(
            {
                "path": rel,
                "kingdom": t[0],
                "phylum": t[1],
                "class": t[2],
                "order": t[3],
                "family": t[4],
                "genus": t[5],
                "specificEpithet": t[6],
                "vernacularName": t[7],
                "scientificName": f"{t[5]} {t[6]}",
                "catalogNumber": f"CAT-{i}",
                "institutionCode": "NHM" if i % 3 else "MNHN",
                "country": COUNTRIES[i % len(COUNTRIES)],
                "year": str(1900 + 10 * (i % 12)),
                "decimalLatitude": f"{-1.0 - i / 100:.3f}" if i % 2 == 0 else "",
                "decimalLongitude": f"{36.0 + i / 100:.3f}" if i % 2 == 0 else "",
                "license": "CC-BY-4.0",
                "preparations": "skin" if i % 2 else "skeleton",
            }
        )
    if labels:
        path = root / "labels.csv"
        existing = []
        if path.exists() and start:
            with open(path, newline="") as f:
                existing = list(csv.DictReader(f))
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(existing + rows)
    return root


def write_shard(path: Path, members: dict[str, bytes], mode: str = "w") -> None:
    """A tar shard holding ``members`` (name -> bytes), compressed as ``mode`` says (``w:gz`` ...)."""
    import io
    import tarfile

    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
