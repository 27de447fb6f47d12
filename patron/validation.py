"""How values that arrive as JSON are read, for the service's requests and the storefront's events alike."""

from __future__ import annotations

import math


def integral(value: object) -> object:
    """JSON has one number type: 17850.0 is the integer 17850 (as JSON Schema says), 17850.5 is not.
    Used as a before-validator, so that a strict integer field takes the first and refuses the second."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    return value


def finite(value: object) -> object:
    """A JSON number that is a real number: refuses booleans, strings, NaN and infinities."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be a number")
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return float(value)
