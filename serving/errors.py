"""The service's own failures that a client is told about (503 with a reason, never a 500): light
classes, importable without the models' libraries (the serving supervisor imports the service
definition, and loads no model)."""

from __future__ import annotations


class NotReady(Exception):
    """No champion models are loaded (yet)."""


class FeaturesUnavailable(Exception):
    """The online store cannot be read right now."""


class EventsUnavailable(Exception):
    """The event log cannot be written (disk full, locked beyond the timeout): nothing was stored."""


class LaneUnavailable(Exception):
    """The CRM lane is starting again after it stopped; the call may be retried."""
