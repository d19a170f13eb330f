"""Server-assigned ids: a short type prefix and 128 random bits, e.g. `ses_3f9c0b...`."""

import uuid


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"
