"""The sidebar's filters and the chips of the filters in use (Streamlit)."""

from __future__ import annotations

from typing import Any

import streamlit as st

from search_ui import state as browse_state
from search_ui.session import bound, change, seed
from search_ui.sidebar import FacetCatalog
from search_ui.state import COORDS, FACET_FIELDS, BrowseState
from search_ui.text import md

__all__ = ["sidebar_filters", "active_filters"]

ss = st.session_state


def sidebar_filters(catalog: FacetCatalog, s: BrowseState, counts: dict[str, Any]) -> None:
    with st.sidebar:
        st.header("Filters")
        st.caption("Numbers: results with each value; for a filter in use, the results without it.")
        ranks = catalog.ranks()
        if ranks:
            active = [r for r in ranks if s.selected(r)]
            seed("w_taxon_rank", active[0] if active else ("family" if "family" in ranks else ranks[-1]))
            if ss["w_taxon_rank"] not in ranks:
                ss["w_taxon_rank"] = ranks[-1]
            rank = st.selectbox("Taxon rank", ranks, key="w_taxon_rank") or ranks[-1]
            _multi_filter(catalog, s, rank, f"Taxon ({rank})", counts)
        for spec in FACET_FIELDS:
            if catalog.options(spec.param) or s.selected(spec.param):
                _multi_filter(catalog, s, spec.param, spec.label, counts)
        years = catalog.year_range()
        if years and years[0] < years[1]:
            lo, hi = s.year or years
            lo = years[0] if lo is None else max(years[0], min(lo, years[1]))
            hi = years[1] if hi is None else min(years[1], max(hi, years[0]))
            seed("w_year", (lo, hi))
            st.slider(
                "Year",
                years[0],
                years[1],
                **bound("w_year", BrowseState.with_year, years),
            )
        if catalog.has_coordinates() or s.coords is not None:
            seed("w_coords", next(k for k, v in COORDS.items() if v == s.coords))
            st.radio(
                "Coordinates",
                list(COORDS),
                **bound("w_coords", BrowseState.with_coords),
            )
        choices = browse_state.K_CHOICES
        seed("w_k", s.k if s.k in choices else browse_state.DEFAULT_K)
        st.select_slider(
            "Results per search",
            choices,
            **bound("w_k", BrowseState.with_k),
            help="How many results the search returns; the facets, map, chart and export describe them.",
        )


def _multi_filter(catalog: FacetCatalog, s: BrowseState, param: str, label: str, counts: dict[str, Any]) -> None:
    key = f"w_f_{param}"
    options = [v for v, _ in catalog.options(param)]
    chosen = list(s.selected(param))
    options += [v for v in chosen if v not in options]
    seed(key, chosen)
    ss[key] = [v for v in ss[key] if v in options]
    here = counts.get(param, {})
    st.multiselect(
        label,
        options,
        **bound(key, BrowseState.with_values, param),
        format_func=lambda v: f"{v} · {here.get(v, 0)}",
        placeholder="any",
    )


def active_filters(s: BrowseState) -> None:
    chips = s.filter_chips()
    if not chips:
        return
    cols = st.columns(min(6, len(chips) + 1))
    for i, chip in enumerate(chips):
        cols[i % (len(cols) - 1 or 1)].button(
            f"✕ {md(chip.text)}",
            key=f"chip_{i}",
            on_click=change,
            args=(BrowseState.without_filter, chip.param, chip.value),
            kwargs={"sync": True},
        )
    cols[-1].button(
        "Clear filters", key="chip_clear", on_click=change, args=(BrowseState.without_filters,), kwargs={"sync": True}
    )
