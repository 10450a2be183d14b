"""The taxonomy tree of the results (Streamlit): where the rank filters put the page (a path of
buttons from "All results" down), and the taxa below it with counts, as many ranks deep as fit; a click on
any node filters the results to it (and the tree follows)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import streamlit as st

from indexer.store.schema import RANKS
from search_ui import searching
from search_ui.session import change
from search_ui.state import BrowseState
from search_ui.taxon_tree import TaxonNode, current_path, taxon_tree

__all__ = ["taxonomy_view", "focus_taxon"]

#: Nodes shown below the current one (whole ranks, as deep as they fit), and children per node
#: (the rest are summed up in one line).
BUDGET = 80
PER_NODE = 12


def focus_taxon(s: BrowseState, rank: str | None, name: str | None) -> BrowseState:
    """The results filtered to the taxon ``name`` at ``rank`` (the filters of the ranks below it
    go; ``rank`` None: all of the rank filters go)."""
    for r in RANKS:
        if rank is None or RANKS.index(r) >= RANKS.index(rank):
            s = s.with_values(r, [])
    if rank is not None and name is not None:
        s = s.with_values(rank, [name])
    return s


def _label(node: TaxonNode) -> str:
    rank = f"{node.rank} " if node.rank else ""
    return f"{rank}{node.name} · {node.count:,}"


def taxonomy_view(s: BrowseState, hits: Sequence[Any]) -> None:
    tree = taxon_tree(hits)
    path = current_path(tree, s)
    st.caption(
        f"The taxa of these {searching.plural(len(hits), 'result')}, with how many results each holds. "
        "Click a taxon to keep only its results."
    )
    with st.container(horizontal=True, gap="small", vertical_alignment="center", key="tree_path"):
        for i, node in enumerate(path):
            if i:
                st.markdown("›")
            st.button(
                _label(node) if node.rank else f"All results · {node.count:,}",
                key=f"tree_path_{i}",
                on_click=change,
                args=(focus_taxon, node.rank, node.name if node.rank else None),
                kwargs={"sync": True},
                type="primary" if i == len(path) - 1 else "secondary",
                disabled=i == len(path) - 1,
            )
    here = path[-1]
    if not here.children:
        st.caption("No lower ranks among these results.")
        return
    counter = 0
    for depth, node in _visible(here):
        counter += 1
        with st.container(key=f"tn{depth}_{counter}"):
            if node.rank is None:  # the "and N more" line
                st.caption(node.name)
                continue
            st.button(
                _label(node),
                key=f"tree_{counter}",
                on_click=change,
                args=(focus_taxon, node.rank, node.name),
                kwargs={"sync": True},
                type="tertiary",
                help=f"Only the results in {node.rank} {node.name}",
            )


def _visible(node: TaxonNode):
    """(depth, node) to show below ``node``, depth first: whole ranks while they fit in BUDGET
    nodes (PER_NODE children each at most); the rest of a node's children as one "and N more"
    line (a node with rank None)."""
    shown: set[int] = set()
    level = [node]
    while level:
        nxt = [c for n in level for c in n.children[:PER_NODE]]
        if not nxt or len(shown) + len(nxt) > BUDGET:
            break
        shown.update(id(c) for c in nxt)
        level = nxt

    def walk(n: TaxonNode, depth: int):
        kids = [c for c in n.children if id(c) in shown]
        for c in kids:
            yield depth, c
            yield from walk(c, depth + 1)
        rest = n.children[len(kids) :] if kids else []
        if rest:
            count = sum(c.count for c in rest)
            yield depth, TaxonNode(None, f"… and {len(rest)} more taxa ({searching.plural(count, 'result')})")

    yield from walk(node, 0)
