"""Repository load and unload requests as any transport receives them (gRPC's
RepositoryModelLoad/Unload, HTTP's `/v2/repository/models/{m}/load`): the reference they name,
checked before the core sees it."""

from __future__ import annotations

from collections.abc import Iterable

from kiln.errors import InferRequestInvalid, quote

HONOURED_PARAMETERS = frozenset({"unload_dependents"})
"""Load/unload parameters accepted (and ignored: Kiln models have no dependents)."""


def repository_reference(name: str, parameters: Iterable[str]) -> str:
    """The reference a load or unload request names; refuses parameters Kiln cannot honour
    (`parameters` are their names)."""
    unsupported = set(parameters) - HONOURED_PARAMETERS
    if unsupported:
        raise InferRequestInvalid(
            f"repository parameters {listed(unsupported)} are not supported: Kiln loads "
            "registered versions as they are (name, name:VERSION or name@ALIAS)"
        )
    if not name:
        raise InferRequestInvalid("model_name is empty: name a model (digits, digits:3, ...)")
    return name


def listed(names: Iterable[str], limit: int = 5) -> str:
    """Client-chosen names for a message: the first few, sorted and quoted."""
    ordered = sorted(names)
    shown = ", ".join(quote(n) for n in ordered[:limit])
    return shown + (f" and {len(ordered) - limit} more" if len(ordered) > limit else "")
