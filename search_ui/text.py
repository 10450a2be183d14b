"""The one escaping helper for text the app shows through Markdown.

Everything a user or a collection controls (URL parameters, the query, notices and errors that
quote them, metadata values, file names) goes through :func:`md` before it reaches
``st.markdown``, ``st.caption``, ``st.info`` / ``st.warning`` / ``st.error``, a widget label or a
tooltip, all of which Streamlit renders as GitHub-flavoured Markdown with its own extensions
(``:red[...]`` colours, ``:material/...:`` icons, ``$...$`` maths).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["md"]

#: Characters that open Markdown anywhere in a line: code, emphasis, strike-through, links and
#: images, HTML and autolinks, tables, entities, maths, Streamlit's ``:color[...]`` directives (their
#: ``[``). Each gets a backslash (CommonMark escapes any ASCII punctuation so).
_INLINE = re.compile(r"([\\`*_{}\[\]()#+!|<>~$&])")
#: What opens a block only at the start of a line: a list item (``-``, ``1.``), a heading (``#``
#: is escaped everywhere), a quote (``>`` too), an indented code block.
_LEADING = re.compile(r"^\s*(?:(-)|(\d+)\.)")
#: Where GFM would turn plain text into a link (``https://...``, ``www.``, ``name@host``): a
#: zero-width space before the ``://``, after ``www`` or after the ``@`` leaves the text reading
#: the same but no longer a link (backslash escapes do not stop every renderer's autolinks).
_AUTOLINK = re.compile(r"(?i)(?=://)|(?<=\bwww)(?=\.)|(?<=@)")
_ZWSP = "\u200b"
#: Line breaks and the spaces around them: untrusted text stays on one line, so it cannot start a
#: block (a heading, a list, a code block, a table) of its own.
_BREAKS = re.compile(r"\s*[\r\n\u2028\u2029]+\s*")


def md(text: Any) -> str:
    """``text`` (anything; ``str()`` of it) escaped for Markdown: shown as it reads, with no link,
    emphasis, HTML, directive or block structure of its own."""
    s = _BREAKS.sub(" ", str(text))
    s = _AUTOLINK.sub(_ZWSP, s)
    s = _INLINE.sub(r"\\\1", s)
    return _LEADING.sub(lambda m: "\\-" if m.group(1) else m.group(2) + "\\.", s.lstrip())
