"""Helpers shared by the jobs: component ranges, names and client resolution."""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from distgmm.errors import DistgmmInputError

__all__ = ["parse_components", "parse_covariance_types", "check_name", "resolve_client",
           "save_figure_at", "check_figure_destination"]

logger = logging.getLogger("distgmm.jobs")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_MAX_COMPONENTS = 1000


def parse_components(spec: str | int | list[int] | range, *, option: str = "--components") -> list[int]:
    """Turn ``"1..12"``, ``"2,4,8"``, ``"3"``, an int or a list into a sorted list of K values.

    Raises
    ------
    DistgmmInputError
        Empty, reversed or non-positive ranges and anything that is not a range.
    """
    if isinstance(spec, bool):
        spec = str(spec)
    if isinstance(spec, int):
        values = [spec]
    elif isinstance(spec, (list, tuple, range)):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in spec):
            raise DistgmmInputError(f"{option} {list(spec)!r} must hold integers only.")
        values = list(spec)
    else:
        values = []
        for part in str(spec).replace(" ", "").split(","):
            match = re.fullmatch(r"(\d+)(?:\.\.(\d+))?", part)
            if not match:
                raise DistgmmInputError(
                    f"{option} {spec!r} is not a component range; write e.g. 1..12, 2,4,8 or 3.")
            low = int(match.group(1))
            high = int(match.group(2)) if match.group(2) else low
            if high < low:
                raise DistgmmInputError(
                    f"{option} {spec!r}: range {part} is reversed; write {high}..{low}.")
            values.extend(range(low, high + 1))
    if not values or min(values) < 1 or max(values) > _MAX_COMPONENTS:
        raise DistgmmInputError(
            f"{option} {spec!r} must name component counts between 1 and {_MAX_COMPONENTS}; "
            "write e.g. 1..12.")
    return sorted(set(values))


def parse_covariance_types(spec: str | list[str], *, option: str = "--covariance-type") -> list[str]:
    """``"full,diag"`` or a list -> validated covariance types, in the given order."""
    from distgmm._kernels import COVARIANCE_TYPES

    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in items:
        item = str(item).strip()
        if item not in COVARIANCE_TYPES:
            raise DistgmmInputError(
                f"{option} {item!r} is not a covariance type; use {', '.join(COVARIANCE_TYPES)} "
                "(comma-separated for several).")
        if item not in out:
            out.append(item)
    if not out:
        raise DistgmmInputError(f"{option} is empty; use e.g. full or full,diag.")
    return out


def check_name(name: str, what: str = "label set name") -> str:
    """Validate a name used as a Zarr array key (letters, digits, ``_.-``)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise DistgmmInputError(
            f"{what} {name!r} is not valid; use letters, digits, '_', '.' and '-' "
            "(starting with a letter or digit).")
    return name


def resolve_client(client: Any = None) -> Any:
    """The given client, or :func:`distgmm.cluster.get_client`'s choice."""
    if client is not None:
        return client
    from distgmm.cluster import get_client

    return get_client()


def check_figure_destination(path: str, what: str,
                             storage_options: dict[str, Any] | None = None) -> None:
    """Refuse, before any work, a PNG destination (local path or URL) that cannot be written
    or holds something else."""
    from distgmm._atomic import check_output_file, check_output_url, is_url

    if is_url(path):
        check_output_url(path, what=what, storage_options=storage_options)
    else:
        check_output_file(path, what=what, kind="png")


def save_figure_at(fig: Any, path: str, storage_options: dict[str, Any] | None = None,
                   **kwargs: Any) -> str:
    """:func:`distgmm.plotting.save_figure` to a local path, or rendered locally and written
    to a URL in one PUT; returns ``path``."""
    import tempfile

    from distgmm._atomic import is_url, write_file
    from distgmm.plotting import save_figure

    if not is_url(path):
        return save_figure(fig, path, **kwargs)
    with tempfile.TemporaryDirectory(prefix="distgmm-figure-") as directory:
        local = save_figure(fig, os.path.join(directory, os.path.basename(path)), **kwargs)
        with open(local, "rb") as handle:
            write_file(path, handle.read(), storage_options)
    return path
