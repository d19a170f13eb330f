"""Tables of the classroom area. They share the core's declarative Base (and naming convention)."""

from __future__ import annotations

from .models import Base  # noqa: F401  (models below subclass it)
