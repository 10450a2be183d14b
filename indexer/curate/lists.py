"""The curator's lists, computed from the stored evidence and the current labels.

Misidentified (labelled images): at each rank from kingdom down to ``rank``, the image's label is
compared with its neighbours' vote and with the zero-shot top taxon; the first rank where it
disagrees with BOTH is where the disagreement starts. Score = (1 - the label's share of the
neighbour vote) x (1 - the label's zero-shot probability) at that rank: 1 when no neighbour and no
probability back the label, 0 when either fully does. The suggested taxon is the name neighbours
and zero-shot agree on (else the better supported of the two), taken down to the deepest rank
where they keep agreeing.

Unidentified (no label, or a label above ``rank``): at each rank below the deepest known one,
the candidate is the neighbours' top name or the zero-shot top name, whichever has the higher
confidence = (its share of the neighbour vote + its zero-shot probability) / 2 (the zero-shot
probability alone when no labelled neighbour votes); the suggestion is taken down rank by rank while
that confidence stays >= ``min_confidence`` (default 0.8) and zero-shot agrees with the known ranks.
Alternatives: the zero-shot top three at the suggested rank.

Duplicates: images with the same ``sha256`` (exact) and pairs of neighbours with cosine >=
``duplicate_cosine`` (near; default 0.97), joined into groups (connected components, scipy), across
sources, institutions and records. Only pairs among each image's ``k`` neighbours are seen.

Outliers: far from every neighbour and from every label. For the cosine to the nearest neighbour
and the largest cosine to any of the collection's labels, a robust z-score (median and MAD over the
collection); score = the smaller of the two (the neighbour one alone without labels); listed when >=
``min_confidence`` (default 3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from indexer.curate.evidence import Evidence
from indexer.curate.options import DEFAULT_CONFIDENCE, ListOptions
from indexer.errors import CurationError
from indexer.store.schema import RANKS

__all__ = ["Entry", "misidentified", "unidentified", "duplicates", "outliers", "outlier_scores"]


@dataclass
class Entry:
    """One line of a list. ``members``: the images of a duplicate group (``id`` is the smallest);
    ``neighbours``: (id, cosine, name at ``rank``) of the voting neighbours; ``alternatives``:
    (name, probability) from zero-shot at ``rank``."""

    kind: str
    id: int
    score: float
    rank: str | None = None
    suggested: str | None = None
    label: str | None = None
    start_rank: str | None = None
    neighbour_share: float | None = None
    zeroshot: float | None = None
    neighbours: list[tuple[int, float, str | None]] = field(default_factory=list)
    alternatives: list[tuple[str, float]] = field(default_factory=list)
    members: list[int] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)


def _ranks_to(rank: str, ev: Evidence) -> list[str]:
    if rank not in RANKS:
        raise CurationError(f"unknown rank {rank!r}; ranks are {', '.join(RANKS)}")
    leaf = ev.leaf_rank or "species"
    return list(RANKS[: min(RANKS.index(rank), RANKS.index(leaf)) + 1])


def _neighbours(ev: Evidence, row: int, rank: str, dup: float) -> list[tuple[int, float, str | None]]:
    nb = ev.state.arrays["nbr_ids"][row]
    sc = ev.state.arrays["nbr_sc"][row]
    rows = ev.state.rows(nb)
    out = []
    for i, s, r in zip(nb.tolist(), sc.tolist(), rows.tolist()):
        if i < 0 or not np.isfinite(s):
            continue
        code = int(ev.labels[rank][r]) if r >= 0 else -1
        name = ev.name(rank, code)
        out.append((int(i), round(float(s), 4), None if name is None else name + (" (duplicate)" if s >= dup else "")))
    return out


def _alternatives(ev: Evidence, row: int, rank: str) -> list[tuple[str, float]]:
    return [
        (ev.name(rank, int(c)) or "", round(float(p), 4))
        for c, p in zip(ev.zs[rank][row][:3], ev.zs_p[rank][row][:3])
        if c >= 0
    ]


def misidentified(ev: Evidence, opts: ListOptions, rows: np.ndarray) -> list[Entry]:
    ranks = _ranks_to(opts.rank, ev)
    dup = opts.duplicate_cosine
    n = len(ev.state.ids)
    start = np.full(n, -1)
    score = np.zeros(n)
    sugg = np.full(n, -1)
    sugg_rank = np.full(n, -1)
    for r, rank in enumerate(ranks):
        own = ev.labels[rank]
        vote = ev.vote(rank, dup)
        z_top = ev.zs[rank][:, 0]
        disagree = (start < 0) & (own >= 0) & (vote.voters > 0) & (vote.top != own) & (z_top >= 0) & (z_top != own)
        if disagree.any():
            z_own = ev.zs_prob(rank, own)
            score = np.where(disagree, (1 - vote.label_share) * (1 - z_own), score)
            choice = np.where((vote.top == z_top) | (vote.share >= ev.zs_p[rank][:, 0]), vote.top, z_top)
            sugg = np.where(disagree, choice, sugg)
            sugg_rank = np.where(disagree, r, sugg_rank)
            start = np.where(disagree, r, start)
        # deepen a suggestion while neighbours and zero-shot keep agreeing
        deeper = (start >= 0) & (start < r) & (sugg_rank == r - 1) & (vote.top >= 0) & (vote.top == z_top)
        sugg = np.where(deeper, vote.top, sugg)
        sugg_rank = np.where(deeper, r, sugg_rank)
    least = DEFAULT_CONFIDENCE["misidentified"] if opts.min_confidence is None else opts.min_confidence
    picked = rows[(start[rows] >= 0) & (score[rows] >= least)]
    out = []
    for row in picked[np.argsort(-score[picked], kind="stable")].tolist():
        s_rank, r_rank = ranks[start[row]], ranks[sugg_rank[row]]
        vote = ev.vote(s_rank, dup)
        own_code = int(ev.labels[s_rank][row])
        out.append(
            Entry(
                "misidentified",
                int(ev.state.ids[row]),
                round(float(score[row]), 4),
                rank=r_rank,
                suggested=ev.name(r_rank, int(sugg[row])),
                label=ev.name(s_rank, own_code),
                start_rank=s_rank,
                neighbour_share=round(float(vote.share[row]), 4),
                zeroshot=round(float(ev.zs_p[s_rank][row, 0]), 4),
                neighbours=_neighbours(ev, row, s_rank, dup),
                alternatives=_alternatives(ev, row, r_rank),
                detail={
                    "label_share": round(float(vote.label_share[row]), 4),
                    "label_zeroshot": round(_prob_of(ev, s_rank, row, own_code), 4),
                    "zeroshot_top": ev.name(s_rank, int(ev.zs[s_rank][row, 0])),
                    "neighbour_top": ev.name(s_rank, int(vote.top[row])),
                },
            )
        )
    return out


def _prob_of(ev: Evidence, rank: str, row: int, code: int) -> float:
    if code < 0:
        return 0.0
    match = ev.zs[rank][row] == code
    return float((ev.zs_p[rank][row] * match).sum())


def unidentified(ev: Evidence, opts: ListOptions, rows: np.ndarray) -> list[Entry]:
    ranks = _ranks_to(opts.rank, ev)
    dup = opts.duplicate_cosine
    least = DEFAULT_CONFIDENCE["unidentified"] if opts.min_confidence is None else opts.min_confidence
    n = len(ev.state.ids)
    known = np.full(n, -1)
    for r, rank in enumerate(RANKS):
        known = np.where(ev.labels[rank] >= 0, r, known)
    target = len(ranks) - 1
    candidates = rows[known[rows] < target]
    sugg = np.full(n, -1)
    sugg_rank = np.full(n, -1)
    conf = np.zeros(n)
    alive = np.zeros(n, dtype=bool)
    alive[candidates] = True
    for r, rank in enumerate(ranks):
        z_top = ev.zs[rank][:, 0]
        at_known = alive & (r <= known)
        if at_known.any():
            # zero-shot must agree with what the label already says
            alive &= ~(at_known & (z_top != ev.labels[rank]))
        below = alive & (r > known)
        if not below.any():
            continue
        vote = ev.vote(rank, dup)
        z_p = ev.zs_p[rank][:, 0]
        nb_of_z = np.where(vote.voters > 0, _share_of(ev, rank, z_top, dup), 0)
        c_z = np.where(vote.voters > 0, (nb_of_z + z_p) / 2, z_p)
        c_n = np.where(vote.voters > 0, (vote.share + ev.zs_prob(rank, vote.top)) / 2, 0)
        cand = np.where(c_n > c_z, vote.top, z_top)
        c = np.maximum(c_n, c_z)
        ok = below & (c >= least) & (cand >= 0)
        sugg = np.where(ok, cand, sugg)
        sugg_rank = np.where(ok, r, sugg_rank)
        conf = np.where(ok, c, conf)
        alive &= ok | ~below
    picked = candidates[sugg_rank[candidates] >= 0]
    out = []
    for row in picked[np.argsort(-conf[picked], kind="stable")].tolist():
        rank = ranks[sugg_rank[row]]
        vote = ev.vote(rank, dup)
        k_rank = RANKS[known[row]] if known[row] >= 0 else None
        out.append(
            Entry(
                "unidentified",
                int(ev.state.ids[row]),
                round(float(conf[row]), 4),
                rank=rank,
                suggested=ev.name(rank, int(sugg[row])),
                label=ev.name(k_rank, int(ev.labels[k_rank][row])) if k_rank else None,
                start_rank=k_rank,
                neighbour_share=round(float(_share_of(ev, rank, np.full(n, sugg[row]), dup)[row]), 4),
                zeroshot=round(_prob_of(ev, rank, row, int(sugg[row])), 4),
                neighbours=_neighbours(ev, row, rank, dup),
                alternatives=_alternatives(ev, row, rank),
            )
        )
    return out


def _share_of(ev: Evidence, rank: str, codes: np.ndarray, dup: float) -> np.ndarray:
    """The neighbour-vote share of ``codes`` (n,) at ``rank``."""
    nb = ev.state.arrays["nbr_ids"]
    sc = ev.state.arrays["nbr_sc"]
    rows = ev.state.rows(nb.reshape(-1)).reshape(nb.shape)
    lab = np.where(rows >= 0, ev.labels[rank][np.maximum(rows, 0)], -1)
    w = np.where((lab >= 0) & (sc < dup) & np.isfinite(sc), np.maximum(sc, 1e-6), 0.0)
    total = w.sum(axis=1)
    return np.where(total > 0, ((lab == codes[:, None]) * w).sum(axis=1) / np.where(total > 0, total, 1), 0.0) * (
        codes >= 0
    )


def duplicates(ev: Evidence, opts: ListOptions, rows: np.ndarray) -> list[Entry]:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(ev.state.ids)
    nb = ev.state.arrays["nbr_ids"]
    sc = ev.state.arrays["nbr_sc"]
    near = np.isfinite(sc) & (sc >= opts.duplicate_cosine)
    a = np.repeat(np.arange(n), nb.shape[1])[near.reshape(-1)]
    b = ev.state.rows(nb[near])
    w = sc[near]
    keep = b >= 0
    a, b, w = a[keep], b[keep], w[keep]
    # exact copies: the same sha256
    sha = ev.sha if ev.sha is not None else np.full(n, None, dtype=object)
    have = np.flatnonzero(np.array([bool(s) for s in sha]))
    ea = eb = np.empty(0, dtype=np.int64)
    if have.size:
        order = have[np.argsort(sha[have].astype(str), kind="stable")]
        same = sha[order][1:] == sha[order][:-1]
        ea, eb = order[:-1][same], order[1:][same]
    src = np.concatenate([a, ea])
    dst = np.concatenate([b, eb])
    if not len(src):
        return []
    graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    involved = np.unique(np.concatenate([src, dst]))
    groups: dict[int, list[int]] = {}
    for row in involved.tolist():
        groups.setdefault(int(comp[row]), []).append(row)
    allowed = np.zeros(n, dtype=bool)
    allowed[rows] = True
    exact_pairs = {(int(x), int(y)) for x, y in zip(ea.tolist(), eb.tolist())}
    out = []
    for members in groups.values():
        if len(members) < 2 or not allowed[members].any():
            continue
        mset = set(members)
        pair = (
            [float(s) for x, y, s in zip(a.tolist(), b.tolist(), w.tolist()) if x in mset] if len(members) < 50 else []
        )
        exact_sets = _exact_sets(members, exact_pairs, ev)
        exact = len(exact_sets) == 1 and len(exact_sets[0]) == len(members)
        least = 1.0 if exact else (min(pair) if pair else float(opts.duplicate_cosine))
        ids = sorted(int(ev.state.ids[m]) for m in members)
        out.append(
            Entry(
                "duplicates",
                ids[0],
                round(least, 4),
                members=ids,
                detail={"exact": exact, "images": len(ids), "exact_copies": exact_sets},
            )
        )
    out.sort(key=lambda e: (-len(e.members), -e.score, e.id))
    return out


def _exact_sets(members: list[int], exact_pairs: set[tuple[int, int]], ev: Evidence) -> list[list[int]]:
    """The ids of a group's members that are byte-identical copies of each other (same sha256)."""
    by_sha: dict[str, list[int]] = {}
    if ev.sha is not None:
        for m in members:
            if ev.sha[m]:
                by_sha.setdefault(str(ev.sha[m]), []).append(int(ev.state.ids[m]))
    return [sorted(v) for v in by_sha.values() if len(v) > 1]


def outlier_scores(ev: Evidence) -> np.ndarray:
    """The outlier score of every image (see the module docstring)."""
    first = ev.state.arrays["nbr_sc"][:, 0].astype(np.float64)
    first = np.where(np.isfinite(first), first, -1.0)
    z_n = _robust_z(first)
    if (ev.state.manifest.get("labels") or {}).get("labels"):
        return np.minimum(z_n, _robust_z(ev.state.arrays["label_cos"].astype(np.float64)))
    return z_n


def _robust_z(x: np.ndarray) -> np.ndarray:
    med = np.median(x) if len(x) else 0.0
    mad = np.median(np.abs(x - med)) * 1.4826 if len(x) else 1.0
    return (med - x) / max(mad, 1e-6)


def outliers(ev: Evidence, opts: ListOptions, rows: np.ndarray) -> list[Entry]:
    z = outlier_scores(ev)
    least = DEFAULT_CONFIDENCE["outliers"] if opts.min_confidence is None else opts.min_confidence
    picked = rows[z[rows] >= least]
    out = []
    for row in picked[np.argsort(-z[picked], kind="stable")].tolist():
        sc = ev.state.arrays["nbr_sc"][row]
        out.append(
            Entry(
                "outliers",
                int(ev.state.ids[row]),
                round(float(z[row]), 3),
                neighbours=_neighbours(ev, row, ev.leaf_rank or "species", opts.duplicate_cosine),
                detail={
                    "nearest_cosine": round(float(sc[0]) if np.isfinite(sc[0]) else -1.0, 4),
                    "label_cosine": round(float(ev.state.arrays["label_cos"][row]), 4),
                },
            )
        )
    return out
