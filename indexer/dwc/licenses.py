"""Licences: GBIF codes, Creative Commons URLs, SPDX-like names and free text, as one SPDX id.

:func:`canonical_license` maps what publishers write to an SPDX licence id (``CC0-1.0``,
``CC-BY-4.0``, ``CC-BY-NC-4.0``, ``CC-BY-NC-SA-3.0``, ``CC-PDM-1.0``, ``PDDL-1.0``, ...), and
:func:`license_url` gives the licence's page. Spellings understood:

- GBIF's codes: ``CC0_1_0``, ``CC_BY_4_0``, ``CC_BY_NC_4_0`` (and the same pattern for SA / ND);
- Creative Commons URLs in any form: http or https, with or without ``www.``, a trailing slash,
  ``legalcode``, ``deed.en``, a ``#fragment``, the ``i.creativecommons.org/l/...png`` badges, the
  ``licences`` misspelling, a national port (``/3.0/us/``: SPDX has ids for a few 3.0 ports; a 4.0
  "port" is the 4.0 licence), and a URL inside a sentence;
- SPDX ids and names in any case and spacing: ``CC-BY-4.0``, ``cc by-nc 4.0``, ``CC BY-NC-SA``,
  ``CC0``, ``CC-Zero``, ``Creative Commons Attribution-NonCommercial 4.0 International``;
- free text: ``Public Domain`` (the Public Domain Mark, ``CC-PDM-1.0``: it states a fact about the
  work, where CC0 is a rights holder's waiver), ``No known copyright restrictions`` (also PDM),
  ``Public Domain Dedication`` (CC0).

A Creative Commons name without a version is the current version, 4.0: GBIF's rule ("CC licenses
without a version are considered to be the current version"). Anything else ("All rights
reserved", an institution's own terms URL) is not recognised: None, and the value is kept as the
publisher wrote it.
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["canonical_license", "license_url", "CC_KINDS"]

#: Creative Commons licence kinds, as URL path parts.
CC_KINDS = ("by", "by-sa", "by-nd", "by-nc", "by-nc-sa", "by-nc-nd")

#: SPDX ids of national ports of version 1.0-3.0 Creative Commons licences (the rest drop the port).
_SPDX_PORTS = {
    "CC-BY-2.5-AU",
    "CC-BY-3.0-AT",
    "CC-BY-3.0-AU",
    "CC-BY-3.0-DE",
    "CC-BY-3.0-IGO",
    "CC-BY-3.0-NL",
    "CC-BY-3.0-US",
    "CC-BY-NC-3.0-DE",
    "CC-BY-NC-ND-3.0-DE",
    "CC-BY-NC-ND-3.0-IGO",
    "CC-BY-NC-SA-2.0-DE",
    "CC-BY-NC-SA-2.0-FR",
    "CC-BY-NC-SA-2.0-UK",
    "CC-BY-NC-SA-3.0-DE",
    "CC-BY-NC-SA-3.0-IGO",
    "CC-BY-ND-3.0-DE",
    "CC-BY-SA-2.0-UK",
    "CC-BY-SA-2.1-JP",
    "CC-BY-SA-3.0-AT",
    "CC-BY-SA-3.0-DE",
    "CC-BY-SA-3.0-IGO",
}
_VERSIONS = ("1.0", "2.0", "2.5", "3.0", "4.0")

_CC_URL = re.compile(
    r"creativecommons\.org/+(?:licen[cs]es|l)/+(by(?:-nc)?(?:-sa|-nd)?|by-nd-nc|by-sa-nc|by-nd-nc)/+(\d\.\d)"
    r"(?:/+([a-z]{2,3}))?(?=[/#?\s.,;)\]]|$)"
)
_CC_PD_URL = re.compile(r"creativecommons\.org/+(?:publicdomain|p)/+(zero|mark)/+1\.0")
_OPEN_DATA_URL = re.compile(r"opendatacommons\.org/licenses/(pddl|by|odbl)\b")
_GBIF_CODE = re.compile(r"^cc_?(0|by(?:_nc)?(?:_sa|_nd)?)_(\d)_(\d)$")
# "cc by-nc-sa 4.0", "cc-by-nc", "CC BY NC ND 3.0", "creative commons by-sa", ... (letters folded to lower case)
_CC_NAME = re.compile(r"\bcc[\s_-]*(by(?:[\s_-]+(?:nc|sa|nd)){0,2})(?:[\s_-]*(\d(?:\.\d)?))?(?![a-z0-9])")
_CC_WORDS = re.compile(r"creative\s*commons|\bcc\b")
_ATTRIBUTION = re.compile(r"attribution|\bby\b")
_VERSION = re.compile(r"\b(\d\.\d)\b")
_CC0 = re.compile(r"\bcc[\s_-]*(?:0|zero)\b|\bcc0|public\s+domain\s+dedication|publicdomain/zero")
_SHORT_KIND = re.compile(r"\bby(?:[\s_-]+(?:nc|sa|nd)\b){1,2}")
_PDM = re.compile(r"public\s*domain(?:\s+mark)?|no\s+known\s+copyright")


def _all_ids() -> dict[str, str]:
    ids = ["CC0-1.0", "CC-PDM-1.0", "PDDL-1.0", "ODC-By-1.0", "ODbL-1.0", *sorted(_SPDX_PORTS)]
    ids += [f"CC-{k.upper()}-{v}" for k in CC_KINDS for v in _VERSIONS]
    return {i.lower(): i for i in ids}


def _kind(parts: str) -> str | None:
    """``by`` / ``by-nc-sa`` from the words of a name ("by nc sa", "by-sa-nc"), in SPDX order."""
    words = set(re.split(r"[\s_-]+", parts.strip()))
    if "by" not in words or not words <= {"by", "nc", "sa", "nd"} or {"sa", "nd"} <= words:
        return None
    kind = "by" + ("-nc" if "nc" in words else "") + ("-sa" if "sa" in words else "") + ("-nd" if "nd" in words else "")
    return kind if kind in CC_KINDS else None


def _cc_id(kind: str, version: str | None, port: str | None = None) -> str | None:
    version = version or "4.0"
    if len(version) == 1:
        version += ".0"
    spdx = f"CC-{kind.upper()}-{version}"
    if port and version != "4.0" and f"{spdx}-{port.upper()}" in _SPDX_PORTS:
        return f"{spdx}-{port.upper()}"
    return spdx if version in _VERSIONS else None


_CANONICAL = _all_ids()


@lru_cache(maxsize=4096)
def canonical_license(value: str | None) -> str | None:
    """The SPDX id ``value`` names, or None when it names no licence we know (see the module docstring)."""
    if value is None:
        return None
    text = " ".join(value.split()).lower()
    if not text:
        return None
    if text in _CANONICAL:
        return _CANONICAL[text]
    m = _GBIF_CODE.match(text)
    if m:
        if m.group(1) == "0":
            return "CC0-1.0" if m.group(2, 3) == ("1", "0") else None
        return _cc_id(m.group(1).replace("_", "-"), f"{m.group(2)}.{m.group(3)}")
    m = _CC_URL.search(text)
    if m:
        kind = _kind(m.group(1).replace("-", " "))
        return _cc_id(kind, m.group(2), m.group(3)) if kind else None
    m = _CC_PD_URL.search(text)
    if m:
        return "CC0-1.0" if m.group(1) == "zero" else "CC-PDM-1.0"
    m = _OPEN_DATA_URL.search(text)
    if m:
        return {"pddl": "PDDL-1.0", "by": "ODC-By-1.0", "odbl": "ODbL-1.0"}[m.group(1)]
    if _CC0.search(text):
        return "CC0-1.0"
    m = _CC_NAME.search(text)
    if m:
        kind = _kind(m.group(1))
        if kind:
            return _cc_id(kind, m.group(2))
    if _CC_WORDS.search(text) and _ATTRIBUTION.search(text):
        # "Creative Commons Attribution-NonCommercial-ShareAlike 4.0 International", "Creative Commons BY-SA 4.0"
        short = _SHORT_KIND.search(text)
        words = set(re.split(r"[\s_-]+", short.group(0))) if short else {"by"}
        if re.search(r"non[\s-]*commercial", text):
            words.add("nc")
        if re.search(r"share[\s-]*alike", text):
            words.add("sa")
        if re.search(r"no[\s-]*deriv", text):
            words.add("nd")
        kind = _kind(" ".join(sorted(words)))
        v = _VERSION.search(text)
        if kind:
            return _cc_id(kind, v.group(1) if v else None)
    if text in ("pddl", "pddl-1.0", "odc-pddl", "odc pddl"):
        return "PDDL-1.0"
    if text in ("odc-by", "odc-by-1.0", "odc by"):
        return "ODC-By-1.0"
    if _PDM.search(text) and "dedication" not in text:
        return "CC-PDM-1.0"
    return None


@lru_cache(maxsize=1024)
def license_url(value: str | None) -> str | None:
    """The page of a licence: its canonical URL for an id we know, the value itself when it is an
    http(s) URL (an institution's own terms), else None."""
    if not value:
        return None
    v = value.strip()
    if v == "CC0-1.0":
        return "https://creativecommons.org/publicdomain/zero/1.0/"
    if v == "CC-PDM-1.0":
        return "https://creativecommons.org/publicdomain/mark/1.0/"
    if v == "PDDL-1.0":
        return "https://opendatacommons.org/licenses/pddl/1-0/"
    if v == "ODC-By-1.0":
        return "https://opendatacommons.org/licenses/by/1-0/"
    if v == "ODbL-1.0":
        return "https://opendatacommons.org/licenses/odbl/1-0/"
    m = re.fullmatch(r"CC-(BY(?:-NC)?(?:-SA|-ND)?)-(\d\.\d)(?:-([A-Z]{2,3}))?", v)
    if m:
        port = f"{m.group(3).lower()}/" if m.group(3) else ""
        return f"https://creativecommons.org/licenses/{m.group(1).lower()}/{m.group(2)}/{port}"
    if re.fullmatch(r"https?://[^\s<>\"'()]+", v):
        return v
    return None
