"""Tables of the roster area. They share the core's declarative Base (and naming convention)."""

from __future__ import annotations

from .models import Base  # noqa: F401  (models below subclass it)
