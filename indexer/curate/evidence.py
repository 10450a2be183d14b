"""The evidence the lists are made of: each image's current labels, its neighbours' vote and its
zero-shot scores, per rank, as integer codes (vectorised over the whole collection).

Names are compared at one rank by their case-folded text (a species as its binomial), so a label
and a prediction agree at ``family`` when both say Corvidae whatever else their lineages say.
Labels are read from the collection's current metadata (the seven rank columns; a binomial
``scientificName`` fills genus and epithet where they are empty), so an edited label counts at once.

The neighbour vote at a rank: each of an image's ``k`` neighbours labelled at that rank votes for its
name with its cosine as weight; near-duplicates of the image (cosine >= the duplicate threshold)
do not vote (a re-imaged specimen carries the same label and is no independent evidence). The
``share`` of a name is its weight over the weight of every voter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from indexer.curate.store import CurationState
from indexer.store.schema import RANK_COLUMNS, RANKS, quote_ident

__all__ = ["Evidence", "Vote"]

_BINOMIAL_RANKS = "('species', 'subspecies', 'variety', 'form', 'infraspecific name')"


class _Vocabulary:
    """Names at one rank -> codes (case-folded, spaces collapsed); the first spelling is shown."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.display: list[str] = []

    def code(self, name: Any) -> int:
        if name is None or isinstance(name, float) or not str(name).strip() or str(name) == "?":
            return -1
        key = " ".join(str(name).split()).casefold()
        c = self.codes.get(key)
        if c is None:
            c = self.codes[key] = len(self.display)
            self.display.append(str(name))
        return c


@dataclass
class Vote:
    """At one rank, per image: the neighbours' top code, its share, the share of each image's own
    label, and how many neighbours voted."""

    top: np.ndarray
    share: np.ndarray
    label_share: np.ndarray
    voters: np.ndarray


@dataclass
class Evidence:
    """Codes per rank (one vocabulary per rank: ``names[rank][code]``): ``labels[rank]`` (n,) the
    images' own (-1: none at that rank), ``zs[rank]`` (n, 5) the zero-shot top five (-1: none) with
    ``zs_p[rank]``; rows are those of ``state``."""

    state: CurationState
    names: dict[str, list[str]] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    zs: dict[str, np.ndarray] = field(default_factory=dict)
    zs_p: dict[str, np.ndarray] = field(default_factory=dict)
    sha: np.ndarray | None = None
    leaf_rank: str | None = None
    _votes: dict[tuple[str, float], Vote] = field(default_factory=dict)

    @classmethod
    def load(cls, state: CurationState, snapshot: Any) -> Evidence:
        import duckdb

        ev = cls(state)
        g, e = quote_ident("genus"), quote_ident("specificEpithet")
        sci, tr = quote_ident("scientificName"), quote_ident("taxonRank")
        binomial = f"({tr} IS NULL OR lower({tr}) IN {_BINOMIAL_RANKS}) AND {sci} LIKE '% %'"
        cols = [quote_ident(c) for c in RANK_COLUMNS[:5]]
        cols.append(f"coalesce({g}, CASE WHEN {binomial} THEN split_part({sci}, ' ', 1) END)")
        cols.append(
            f"coalesce({e}, CASE WHEN {binomial} AND regexp_matches(split_part({sci}, ' ', 2), '^[a-z]') "
            f"THEN split_part({sci}, ' ', 2) END)"
        )
        select = ", ".join(f"{c} AS r{i}" for i, c in enumerate(cols))
        con = duckdb.connect(":memory:")
        got = con.execute(f"SELECT id, {select}, sha256 FROM ({snapshot.images_sql()}) ORDER BY id").fetchnumpy()
        con.close()
        rows = state.rows(np.asarray(got["id"], dtype=np.int64))
        n = len(state.ids)
        labels_raw = []
        for i in range(7):
            col = np.full(n, None, dtype=object)
            col[rows[rows >= 0]] = np.asarray(got[f"r{i}"], dtype=object)[rows >= 0]
            labels_raw.append(col)
        genus = labels_raw[5]
        species = np.array([f"{a} {b}" if a and b else None for a, b in zip(genus, labels_raw[6])], dtype=object)
        labels_raw[6] = species
        sha = np.full(n, None, dtype=object)
        sha[rows[rows >= 0]] = np.asarray(got["sha256"], dtype=object)[rows >= 0]
        ev.sha = sha
        groups = (state.manifest.get("labels") or {}).get("groups", {})
        ev.leaf_rank = (state.manifest.get("labels") or {}).get("leaf_rank")
        for r, rank in enumerate(RANKS):
            vocab = _Vocabulary()
            code = vocab.code
            group_codes = np.array([code(nm) for nm in groups.get(rank, [])] + [-1], dtype=np.int64)
            ev.labels[rank] = np.fromiter((code(v) for v in labels_raw[r]), dtype=np.int64, count=n)
            idx = state.arrays["zs_idx"][:, r, :].astype(np.int64)
            ev.zs[rank] = np.where(idx >= 0, group_codes[np.where(idx >= 0, idx, len(group_codes) - 1)], -1)
            ev.zs_p[rank] = state.arrays["zs_p"][:, r, :]
            ev.names[rank] = vocab.display
        return ev

    def name(self, rank: str, code: int) -> str | None:
        return self.names[rank][code] if code >= 0 else None

    def zs_prob(self, rank: str, codes: np.ndarray) -> np.ndarray:
        """Zero-shot probability of ``codes`` (n,) at ``rank`` (0 when not among the top three)."""
        match = self.zs[rank] == codes[:, None]
        return (self.zs_p[rank] * match).sum(axis=1) * (codes >= 0)

    def vote(self, rank: str, duplicate_cosine: float) -> Vote:
        key = (rank, float(duplicate_cosine))
        if key in self._votes:
            return self._votes[key]
        n = len(self.state.ids)
        top = np.full(n, -1, dtype=np.int64)
        share = np.zeros(n)
        label_share = np.zeros(n)
        voters = np.zeros(n, dtype=np.int64)
        for lo in range(0, n, _CHUNK):
            sl = slice(lo, lo + _CHUNK)
            t, s, ls, v = _vote(self, rank, sl, duplicate_cosine)
            top[sl], share[sl], label_share[sl], voters[sl] = t, s, ls, v
        vote = Vote(top, share, label_share, voters)
        self._votes[key] = vote
        return vote


_CHUNK = 65_536


def _vote(ev: Evidence, rank: str, sl: slice, duplicate_cosine: float) -> tuple:
    nb = ev.state.arrays["nbr_ids"][sl]
    sc = ev.state.arrays["nbr_sc"][sl]
    rows = ev.state.rows(nb.reshape(-1)).reshape(nb.shape)
    lab = ev.labels[rank]
    codes = np.where(rows >= 0, lab[np.maximum(rows, 0)], -1)
    w = np.where((codes >= 0) & (sc < duplicate_cosine) & np.isfinite(sc), np.maximum(sc, 1e-6), 0.0)
    total = w.sum(axis=1)
    support = np.zeros(w.shape)
    for j in range(codes.shape[1]):
        support += (codes == codes[:, j : j + 1]) * w[:, j : j + 1]
    support *= codes >= 0
    best = support.argmax(axis=1)
    top = np.take_along_axis(codes, best[:, None], axis=1)[:, 0]
    top = np.where(total > 0, top, -1)
    safe = np.where(total > 0, total, 1.0)
    share = np.where(total > 0, support.max(axis=1) / safe, 0.0)
    own = lab[sl]
    label_share = ((codes == own[:, None]) * w).sum(axis=1) / safe * (own >= 0) * (total > 0)
    return top, share, label_share, (w > 0).sum(axis=1)
