"""``basisOfRecord``: every spelling publishers use, mapped to one Darwin Core class name.

Canonical values are the Darwin Core class names the term recommends (``PreservedSpecimen``,
``FossilSpecimen``, ``LivingSpecimen``, ``MaterialSample``, ``HumanObservation``,
``MachineObservation``, ``MaterialCitation``, ``Occurrence``, ``Event``, ``Taxon``,
``MaterialEntity``), plus ``Observation`` for GBIF's generic ``OBSERVATION`` (an observation that
does not say whether a person or a machine made it: we do not guess ``HumanObservation``).

A value is matched by its letters alone, upper-cased (``PRESERVED_SPECIMEN``, ``PreservedSpecimen``
and ``preserved specimen`` are all ``PRESERVEDSPECIMEN``), the way GBIF's own parser does it
(gbif/parsers ``basisOfRecord.tsv``); our table is written from the spellings found in real
archives (GBIF 2013 downloads: ``S``, ``specimen``; old IPT archives: ``Specimen``; GBIF's
enumeration) and from GBIF's deprecation notes (``UNKNOWN`` -> ``Occurrence``, ``LITERATURE`` ->
``MaterialCitation``). A value that is a list (``Observation, something``) is tried by its first
part. Anything else is not recognised: :func:`canonical_basis` returns None and the value is kept
as the publisher wrote it.
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["BASIS_OF_RECORD", "canonical_basis"]

#: The canonical values, in the order the app lists them.
BASIS_OF_RECORD: tuple[str, ...] = (
    "PreservedSpecimen",
    "FossilSpecimen",
    "LivingSpecimen",
    "MaterialSample",
    "HumanObservation",
    "MachineObservation",
    "Observation",
    "MaterialCitation",
    "MaterialEntity",
    "Occurrence",
    "Event",
    "Taxon",
)

_SPELLINGS: dict[str, tuple[str, ...]] = {
    "PreservedSpecimen": (
        "S",
        "SP",
        "PS",
        "SPECIMEN",
        "SPECIMENS",
        "PRESERVED",
        "PRESERVEDSPECIMENS",
        "MUSEUMSPECIMEN",
        "HERBARIUMSHEET",
        "HERBARIUMSPECIMEN",
        "HERBARIUM",
        "VOUCHER",
        "VOUCHERSPECIMEN",
    ),
    "FossilSpecimen": ("FOSSIL", "FOSSILS", "FOSSILSPECIMENS", "FS"),
    "LivingSpecimen": ("LIVING", "LIVINGSPECIMENS", "LIVINGORGANISM", "LS", "CULTURE", "GERMPLASM"),
    "MaterialSample": ("SAMPLE", "SAMPLES", "MATERIALSAMPLES", "ENVIRONMENTALSAMPLE", "TISSUE", "TISSUESAMPLE"),
    "HumanObservation": ("HO", "HUMANOBSERVATIONS", "FIELDOBSERVATION"),
    "MachineObservation": ("MACHINE", "MACHINEOBSERVATIONS"),
    "Observation": ("O", "OBS", "OBSERVATIONS", "SIGHTING", "SIGHTINGS", "PHOTO", "PHOTOGRAPH", "STILLIMAGE"),
    "MaterialCitation": ("LITERATURE", "LIT", "PUBLICATION", "LITERATUREOCCURRENCE", "CITATION"),
    "Occurrence": ("UNKNOWN", "OCCURRENCES"),
}

_LOOKUP: dict[str, str] = {name.upper(): name for name in BASIS_OF_RECORD}
for _canon, _names in _SPELLINGS.items():
    _LOOKUP.update(dict.fromkeys(_names, _canon))

_NOT_LETTERS = re.compile(r"[^A-Z]")
_LIST = re.compile(r"[,;|/(]")


@lru_cache(maxsize=4096)
def canonical_basis(value: str | None) -> str | None:
    """The Darwin Core class name ``value`` means, or None when it is not recognised (or empty)."""
    if value is None:
        return None
    for part in (value, _LIST.split(value, 1)[0]):
        key = _NOT_LETTERS.sub("", part.upper())
        if key in _LOOKUP:
            return _LOOKUP[key]
    return None
