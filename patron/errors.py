"""The one base of the errors a user can act on."""

from __future__ import annotations


class PatronError(Exception):
    """Bad or missing data, a state directory not set up for what was asked, a model that cannot be
    used: the message says what was expected and what was found. The command line prints it as one
    line (exit code 2), never as a traceback."""


class NotFittedError(RuntimeError):
    """A model was used before it was fitted or loaded: a programming error, not the user's."""
