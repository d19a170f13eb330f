"""SchedulingService. Every RPC answers UNIMPLEMENTED until the scheduling capability arrives."""

from __future__ import annotations

from classwire.api.scheduling.v1 import service_pb2_grpc

from .unimplemented import unimplemented_servicer

SERVICE = "classwire.api.scheduling.v1.SchedulingService"


def scheduling_servicer(platform) -> object:
    """The servicer, built from the composition root's Platform (db, uow, plugins, ...)."""
    return unimplemented_servicer(service_pb2_grpc.SchedulingServiceServicer, SERVICE)
