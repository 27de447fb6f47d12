"""What the buy-till-you-die models share: input checks and the maximum-likelihood fit.

The models: BG/NBD purchases in :mod:`beta_geo`, Gamma-Gamma spend in :mod:`gamma_gamma`.

Why these models: a churn label needs an arbitrary "no purchase for N days" cut-off, whereas the
BG/NBD model (Fader, Hardie & Lee 2005, "Counting your customers the easy way") treats dropout as
unobserved and infers, from each customer's frequency, recency and age alone, how likely they are
to still be a customer and how many purchases to expect from them. The Gamma-Gamma model (Fader,
Hardie & Lee 2005, "RFM and CLV: using iso-value curves") adds how much they spend per purchase,
shrinking a customer's observed mean towards the population mean, more so when it rests on few
purchases. Their product is an expected (undiscounted) value over a horizon.

Both are fitted here by maximum likelihood with scipy: the parameters are optimised on the log
scale (so they stay positive without constraints that stall the optimiser), time and money are
rescaled to unit size before fitting (so one set of starting values and bounds works whatever the
time unit or currency), the gradients are analytic, and a few starting points are tried. The
likelihoods are evaluated in log space with ``gammaln``/``betaln`` so that customers with hundreds
of purchases do not overflow.

Conventions (those of the BTYD literature): an *order* is a distinct calendar day (UTC) on which a
customer bought; ``frequency`` counts the repeat purchase days (all but the first), ``recency`` is
the time from the first to the last purchase day, ``T`` the time from the first purchase day to the
end of observation, all in one time unit (weeks by default).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize

# Log-parameters are kept inside [-LOG_BOUND, LOG_BOUND] on the rescaled problem (about 1e-9 to
# 1e9 times the natural scale): wide enough for any real fit, narrow enough that a degenerate data
# set (e.g. no sign of dropout, which sends a and b to infinity) stops at a finite model.
LOG_BOUND = 20.0


# --------------------------------------------------------------------------------------------------
# Input checks: every public entry point fails with a ValueError saying what was expected.
# --------------------------------------------------------------------------------------------------


def float_array(name: str, values: npt.ArrayLike) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected numbers, got {type(values).__name__} ({exc})") from exc
    if arr.ndim > 1:
        raise ValueError(f"{name}: expected a scalar or a 1-D array, got shape {arr.shape}")
    return arr


def first_bad(mask: np.ndarray, *arrays: tuple[str, np.ndarray]) -> str:
    """Describe how many entries are bad and show the first one, for error messages."""
    idx = int(np.flatnonzero(mask)[0])
    shown = ", ".join(f"{name}={np.atleast_1d(arr)[idx]!r}" for name, arr in arrays)
    return f"{int(mask.sum())} offending value(s), first at position {idx}: {shown}"


def check_finite(name: str, arr: np.ndarray) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(f"{name}: expected finite numbers, got NaN/inf ({first_bad(bad, (name, arr))})")


def check_rft(
    frequency: npt.ArrayLike, recency: npt.ArrayLike, T: npt.ArrayLike, *, for_fit: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate and broadcast (frequency, recency, T) per customer."""
    x = float_array("frequency", frequency)
    tx = float_array("recency", recency)
    age = float_array("T", T)
    try:
        x, tx, age = np.broadcast_arrays(x, tx, age)
    except ValueError as exc:
        raise ValueError(
            "frequency, recency and T: expected arrays of the same length (one entry per customer), "
            f"got shapes {np.shape(frequency)}, {np.shape(recency)}, {np.shape(T)}"
        ) from exc
    if x.size == 0:
        raise ValueError("frequency, recency and T: expected at least one customer, got empty arrays")
    for name, arr in (("frequency", x), ("recency", tx), ("T", age)):
        check_finite(name, arr)
    bad = (x < 0) | (x != np.round(x))
    if bad.any():
        raise ValueError(
            "frequency: expected non-negative whole numbers of repeat purchases, got "
            + first_bad(bad, ("frequency", x))
        )
    bad = tx < 0
    if bad.any():
        raise ValueError("recency: expected >= 0, got " + first_bad(bad, ("recency", tx)))
    bad = age <= 0
    if bad.any():
        raise ValueError("T: expected > 0 (customer age at the end of observation), got " + first_bad(bad, ("T", age)))
    bad = tx > age
    if bad.any():
        raise ValueError(
            "recency: expected recency <= T (the last purchase cannot come after the end of "
            "observation), got " + first_bad(bad, ("recency", tx), ("T", age))
        )
    bad = (x == 0) & (tx != 0)
    if bad.any():
        raise ValueError(
            "recency: expected 0 for customers with frequency 0 (no repeat purchase), got "
            + first_bad(bad, ("frequency", x), ("recency", tx))
        )
    if for_fit and not (x > 0).any():
        raise ValueError(
            "frequency: expected at least one customer with a repeat purchase (frequency > 0) to "
            "fit BG/NBD, got none"
        )
    return x, tx, age


def check_t(t: npt.ArrayLike) -> np.ndarray:
    arr = float_array("t", t)
    check_finite("t", arr)
    bad = arr < 0
    if bad.any():
        raise ValueError("t: expected a horizon >= 0 in time units, got " + first_bad(bad, ("t", arr)))
    return arr


def check_fm(
    frequency: npt.ArrayLike, monetary_value: npt.ArrayLike, *, for_fit: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and broadcast (frequency, monetary_value) per customer."""
    x = float_array("frequency", frequency)
    m = float_array("monetary_value", monetary_value)
    try:
        x, m = np.broadcast_arrays(x, m)
    except ValueError as exc:
        raise ValueError(
            "frequency and monetary_value: expected arrays of the same length (one entry per "
            f"customer), got shapes {np.shape(frequency)}, {np.shape(monetary_value)}"
        ) from exc
    if x.size == 0:
        raise ValueError("frequency and monetary_value: expected at least one customer, got empty arrays")
    check_finite("frequency", x)
    check_finite("monetary_value", m)
    bad = (x < 0) | (x != np.round(x))
    if bad.any():
        raise ValueError(
            "frequency: expected non-negative whole numbers of repeat purchases, got "
            + first_bad(bad, ("frequency", x))
        )
    bad = m < 0
    if bad.any():
        raise ValueError("monetary_value: expected >= 0, got " + first_bad(bad, ("monetary_value", m)))
    bad = (x > 0) & (m <= 0)
    if bad.any():
        raise ValueError(
            "monetary_value: expected > 0 for customers with frequency > 0 (mean spend of their "
            "repeat purchases), got " + first_bad(bad, ("frequency", x), ("monetary_value", m))
        )
    if for_fit and int((x > 0).sum()) < 2:
        raise ValueError(
            "frequency: expected at least 2 customers with frequency > 0 to fit Gamma-Gamma, got "
            f"{int((x > 0).sum())}"
        )
    return x, m


def check_penalizer(penalizer: float) -> float:
    if not (isinstance(penalizer, (int, float)) and math.isfinite(penalizer) and penalizer >= 0):
        raise ValueError(f"penalizer: expected a finite number >= 0, got {penalizer!r}")
    return float(penalizer)


def check_params(model: str, **params: float) -> None:
    for name, value in params.items():
        if not (isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{model}.{name}: expected a finite number > 0, got {value!r}")


def params_from_dict(model: str, d: dict[str, Any], names: tuple[str, ...]) -> dict[str, float]:
    if not isinstance(d, dict):
        raise ValueError(f"{model}.from_dict: expected a dict, got {type(d).__name__}")
    if d.get("model", model) != model:
        raise ValueError(f"{model}.from_dict: expected model {model!r}, got {d.get('model')!r}")
    missing = [n for n in names if n not in d]
    if missing:
        raise ValueError(f"{model}.from_dict: expected keys {list(names)}, missing {missing}")
    try:
        return {n: float(d[n]) for n in names}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{model}.from_dict: expected numeric values for {list(names)}, got {d!r}") from exc


# --------------------------------------------------------------------------------------------------
# Optimisation
# --------------------------------------------------------------------------------------------------


def minimise(
    objective: Callable[[np.ndarray], tuple[float, np.ndarray]], starts: list[np.ndarray], model: str
) -> np.ndarray:
    """Best L-BFGS-B solution over several starting points, in log-parameters.

    Several starts because these likelihoods, though usually well behaved, can have flat ridges on
    messy data (e.g. a and b growing together when dropout is barely identified); the tight
    tolerances are what reproducing published estimates to three significant digits needs.
    """
    best = None
    bounds = [(-LOG_BOUND, LOG_BOUND)] * len(starts[0])
    for x0 in starts:
        x0 = np.clip(x0, -LOG_BOUND + 1, LOG_BOUND - 1)
        res = minimize(
            objective,
            x0,
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-10, "maxcor": 20},
        )
        if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
            best = res
    if best is None:
        raise RuntimeError(f"{model}: the likelihood was not finite at any starting point")
    # A line-search stop at machine precision is a converged fit; anything else is worth a warning.
    grad_norm = float(np.max(np.abs(best.jac))) if best.jac is not None else float("nan")
    if not best.success and not grad_norm < 1e-5:
        warnings.warn(
            f"{model}: optimiser stopped without converging ({best.message}); max |gradient| "
            f"{grad_norm:.2e}",
            RuntimeWarning,
            stacklevel=3,
        )
    if np.any(np.abs(best.x) >= LOG_BOUND - 1e-6):
        warnings.warn(
            f"{model}: a parameter reached its bound (log-parameters {best.x.round(3).tolist()}); "
            "the data barely identify it, consider a small penalizer",
            RuntimeWarning,
            stacklevel=3,
        )
    return best.x
