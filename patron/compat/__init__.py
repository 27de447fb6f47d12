"""Adapters around private APIs of dependencies, one small module per use.

Each adapter names the versions of its dependency it was checked against and refuses, at import,
any other installed version (:func:`require`): an upgrade then fails loudly with both versions
instead of breaking silently. To upgrade, read the dependency's new source for what the adapter
relies on, rerun its tests, and add the version.
"""

from __future__ import annotations

from importlib import metadata

from patron.errors import PatronError


class IncompatibleDependency(PatronError, ImportError):
    """An installed dependency is not a version whose private API the adapter was checked against."""


def require(distribution: str, known: tuple[str, ...], adapter: str) -> str:
    """The installed version of ``distribution``; refuses one that ``adapter`` does not know."""
    installed = metadata.version(distribution)
    if installed not in known:
        raise IncompatibleDependency(
            f"{adapter} relies on private APIs of {distribution} as of version {', '.join(known)}, but {distribution} "
            f"{installed} is installed: check {adapter} against {distribution} {installed} (its docstring says what it "
            f"relies on), run its tests, and add the version, or install {distribution}=={known[-1]}"
        )
    return installed
