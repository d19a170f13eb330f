"""RosterService. Every RPC answers UNIMPLEMENTED until the rosters capability arrives."""

from __future__ import annotations

from classwire.api.roster.v1 import service_pb2_grpc

from .unimplemented import unimplemented_servicer

SERVICE = "classwire.api.roster.v1.RosterService"


def roster_servicer(platform) -> object:
    """The servicer, built from the composition root's Platform (db, uow, plugins, ...)."""
    return unimplemented_servicer(service_pb2_grpc.RosterServiceServicer, SERVICE)
