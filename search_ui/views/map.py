"""The map of the results (Streamlit + pydeck): clusters with counts over a basemap that needs no
tile server (the bundled Natural Earth countries), or over internet tiles when the user picks them.

deck.gl is bundled in Streamlit's frontend, and ``map_provider=None`` keeps it from fetching a map
style, so the outline map works with no internet at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import streamlit as st

from search_ui import geo, searching
from search_ui.session import bound, seed
from search_ui.state import BrowseState

__all__ = ["map_view"]

_BASEMAP_LABELS = {"outline": "Countries (works offline)", "tiles": "Street map (needs the internet)"}


def _layers(clusters: Sequence[geo.Cluster], outline: bool) -> list[Any]:
    import pydeck as pdk  # here: only a page with a map pays for its import

    data = [
        {
            "lat": c.lat,
            "lon": c.lon,
            "count": c.count,
            "label": c.label,
            "radius": 9 + 4 * math.sqrt(c.count),
            "names": ", ".join(c.names) + (" …" if c.count > len(c.names) else ""),
        }
        for c in clusters
    ]
    layers = []
    if outline:
        layers.append(
            pdk.Layer(
                "GeoJsonLayer",
                id="countries",
                data=geo.basemap(),
                stroked=True,
                filled=True,
                get_fill_color=[232, 230, 220],
                get_line_color=[128, 128, 128],
                line_width_min_pixels=1,
            )
        )
    layers += [
        pdk.Layer(
            "ScatterplotLayer",
            id="clusters",
            data=data,
            get_position="[lon, lat]",
            get_radius="radius",
            radius_units="'pixels'",  # quoted: pydeck makes a bare string an expression
            radius_min_pixels=6,
            radius_max_pixels=48,
            get_fill_color=[176, 42, 30, 215],
            get_line_color=[255, 255, 255],
            line_width_min_pixels=1.5,
            stroked=True,
            pickable=True,
        ),
        pdk.Layer(
            "TextLayer",
            id="counts",
            data=data,
            get_position="[lon, lat]",
            get_text="label",
            get_size=13,
            get_color=[255, 255, 255],
            font_weight=700,
        ),
    ]
    return layers


def map_view(s: BrowseState, hits: Sequence[Any]) -> None:
    points = searching.map_points(hits)
    if not points:
        st.info("None of these results has coordinates.")
        return
    clusters = geo.clusters(points)
    have = "has" if len(points) == 1 else "have"
    st.caption(
        f"{len(points):,} of {searching.plural(len(hits), 'result')} {have} coordinates, "
        f"in {searching.plural(len(clusters), 'place')}: each circle's number is how many results it holds "
        "(points close together are one circle)."
    )
    seed("w_basemap", s.basemap)
    st.radio(
        "Background",
        list(_BASEMAP_LABELS),
        **bound("w_basemap", BrowseState.with_basemap),
        format_func=_BASEMAP_LABELS.get,
        horizontal=True,
    )
    import pydeck as pdk

    outline = s.basemap != "tiles"
    view = geo.view_for(points)
    # No map_style for the outline: a null style is what Streamlit fills with Carto's (a tile server)
    style = {} if outline else {"map_style": "light"}
    deck = pdk.Deck(
        map_provider=None if outline else "carto",
        **style,
        initial_view_state=pdk.ViewState(**view),
        layers=_layers(clusters, outline),
        tooltip={"text": "{count} results\n{names}"},
    )
    st.pydeck_chart(
        deck,
        height=520,
        key="map",
        alt=f"Map of {len(points)} results in {len(clusters)} places",
    )
    if outline:
        st.caption(geo.BASEMAP_CREDIT)
