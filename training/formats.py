"""The format header every saved model directory carries (``format`` and ``format_version``).

Kept free of heavy imports: the session model loads without the rest of training.
"""

from __future__ import annotations

from pathlib import Path


def check_format(meta: dict, where: Path, name: str, version: int | tuple[int, ...], error: type[Exception]) -> None:
    """Refuse a saved model of another format or format version (``version``: the one, or the
    ones, this code reads), saying which and what to do."""
    versions = (version,) if isinstance(version, int) else tuple(version)
    if meta.get("format") != name:
        raise error(f"{where}: expected format {name!r}, got {meta.get('format')!r}")
    if meta.get("format_version") not in versions:
        readable = " or ".join(str(v) for v in versions)
        raise error(f"{where}: saved with {name} format version {meta.get('format_version')!r}, "
                    f"this code reads version {readable}; retrain the model (or load it with the code that wrote it)")
