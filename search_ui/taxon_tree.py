"""The taxonomy tree of the current results (kingdom to species, with counts), and where the page
is in it: the path the rank filters in use select.

Each node is a taxon at a rank with how many of the results fall in it; a click on a node filters
the results to it (``BrowseState.with_values(rank, [name])``), so the tree's position is in the
URL like any filter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

from indexer.store.schema import RANKS
from search_ui.hit_fields import hit_taxon_name
from search_ui.state import BrowseState

__all__ = ["TaxonNode", "taxon_tree", "current_path", "UNKNOWN"]

UNKNOWN = "(not given)"


@dataclass
class TaxonNode:
    """A taxon of the tree: its rank and name, how many results, its children (most first)."""

    rank: str | None  # None for the root (all results)
    name: str
    count: int = 0
    children: list[TaxonNode] = field(default_factory=list)

    def child(self, name: str) -> TaxonNode | None:
        return next((c for c in self.children if c.name == name), None)

    def walk(self, depth: int = 0):
        """(depth, node) of this node's descendants, depth first, in display order."""
        for c in self.children:
            yield depth, c
            yield from c.walk(depth + 1)


def taxon_tree(hits: Sequence, ranks: Sequence[str] = RANKS) -> TaxonNode:
    """The tree of ``hits`` over ``ranks``. A rank a result does not give is skipped for it (its
    lower ranks hang from the rank above); a result with none of them counts in the root only."""
    root = TaxonNode(None, "All results")
    index: dict[tuple, TaxonNode] = {}
    for hit in hits:
        root.count += 1
        node, path = root, cast(tuple[tuple[str, str], ...], ())
        for rank in ranks:
            name = hit_taxon_name(hit, rank)
            if not name:
                continue
            path = (*path, (rank, name))
            child = index.get(path)
            if child is None:
                child = TaxonNode(rank, name)
                node.children.append(child)
                index[path] = child
            child.count += 1
            node = child
    _sort(root)
    return root


def _sort(node: TaxonNode) -> None:
    node.children.sort(key=lambda c: (-c.count, c.name))
    for c in node.children:
        _sort(c)


def current_path(tree: TaxonNode, state: BrowseState) -> list[TaxonNode]:
    """The nodes from the root down to the deepest one the state's rank filters select (each with
    one value); the root alone when none does. Ranks between are followed through the tree when
    all results below share one taxon there."""
    path = [tree]
    chosen = {r: state.selected(r)[0] for r in RANKS if len(state.selected(r)) == 1}
    if not chosen:
        return path
    deepest = max(RANKS.index(r) for r in chosen)
    node = tree
    while node.children:
        rank = node.children[0].rank
        if rank is None or RANKS.index(rank) > deepest:
            break
        want = chosen.get(rank)
        nxt = node.child(want) if want else (node.children[0] if len(node.children) == 1 else None)
        if nxt is None:
            break
        path.append(nxt)
        node = nxt
    return path
