"""ralph's LRS application for uvicorn, with its file-system backend appending statements.

ralph 5.1's fs LRS backend writes with the data backend's default operation, CREATE, so every
POST after the first fails ("already exists and overwrite is not allowed") with HTTP 500.
Appending is what an LRS on a JSON Lines file needs; everything else is ralph as shipped.
"""

from ralph.backends.data.base import BaseOperationType
from ralph.backends.lrs.fs import FSLRSBackend

FSLRSBackend.default_operation_type = BaseOperationType.APPEND

from ralph.api import app  # noqa: E402  (imported after the fix: it builds the backend)

__all__ = ["app"]
