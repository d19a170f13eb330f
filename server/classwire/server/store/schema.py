"""The whole schema: importing this module registers every table on Base.metadata.

Migrations and the schema check compare against this, so a model module missing here is a
model missing from both.
"""

from . import (  # noqa: F401
    analytics_models,
    classroom_models,
    data_models,
    documentation_models,
    media_models,
    models,
    notification_models,
    recording_models,
    roster_models,
    scheduling_models,
    xapi_models,
)

Base = models.Base
