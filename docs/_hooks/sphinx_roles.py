"""Griffe extension: show the Sphinx roles of commlib's docstrings as inline code in the API pages.

commlib's docstrings cross-reference with reStructuredText roles (``:func:`commlib.ops.pack_bits```,
``:class:`~commlib.compress.Compressor```), which Markdown would print verbatim. Each object's
docstring is rewritten before rendering: ``:role:`target``` becomes ```target``` (for ``~target``,
only its last dotted component, as Sphinx shows it), and a paragraph ending in ``::`` (the reST
literal-block marker) ends in ``:``. The sources are not changed.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj|const):`(~?)([^`]+)`")
LITERAL_MARKER = re.compile(r"(?<=\S)::$", re.MULTILINE)


def markdown_roles(text: str) -> str:
    """``text`` with every Sphinx role turned into inline code and every ``::`` marker into ``:``."""

    def code(match: re.Match[str]) -> str:
        target = match.group(2)
        return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"

    return LITERAL_MARKER.sub(":", ROLE.sub(code, text))


class SphinxRoles(griffe.Extension):
    """Rewrites each loaded object's docstring with :func:`markdown_roles`."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown_roles(obj.docstring.value)
