"""The one Jinja environment: every prompt, notes.txt and the report are rendered here.

Templates are read and compiled once, at import, before any agent code has run (auto_reload
off), so nothing written to this folder later changes what the loop says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

TEXT = Path(__file__).resolve().parent


def render(name: str, **values: Any) -> str:
    """Render text/<name> with `values` (a missing value is an error, never an empty string)."""
    return _JINJA.get_template(name).render(**values)


_JINJA = Environment(
    loader=FileSystemLoader(TEXT),
    undefined=StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    auto_reload=False,
)
for _name in _JINJA.list_templates(extensions=["j2"]):
    _JINJA.get_template(_name)  # now, before any agent code has run
