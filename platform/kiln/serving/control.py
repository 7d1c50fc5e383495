"""What requests ask of the server, checked the same whichever transport carried them: the
reference a repository load or unload names (gRPC's RepositoryModelLoad/Unload, HTTP's
`/v2/repository/models/{m}/load`), an inference request's queue timeout and its output
parameters."""

from __future__ import annotations

from collections.abc import Iterable

from kiln.errors import InferRequestInvalid, quote
from kiln.serving.messages import ParameterValue

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


OUTPUT_PARAMETERS = frozenset({"binary_data"})
"""Parameters a requested output may carry (binary_data: HTTP's binary extension; gRPC's
outputs are always raw)."""


def queue_timeout_us(parameters: dict[str, ParameterValue]) -> int:
    """Take the `timeout` parameter out of `parameters`: how long the request may wait in the
    queue, in microseconds (0, none, when absent)."""
    timeout = parameters.pop("timeout", 0)
    if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0:
        raise InferRequestInvalid(
            "parameter 'timeout' must be a non-negative integer (microseconds), got "
            f"{timeout!r:.40}"
        )
    return timeout


def check_output_parameters(output: str, names: Iterable[str], extensions: str) -> None:
    """Refuse output parameters this server does not implement; `extensions` says where the
    client can read the ones it does."""
    unsupported = set(names) - OUTPUT_PARAMETERS
    if unsupported:
        raise InferRequestInvalid(
            f"output {quote(output)} asks for {listed(unsupported)}, which this server does "
            f"not support ({extensions})"
        )


def listed(names: Iterable[str], limit: int = 5) -> str:
    """Client-chosen names for a message: the first few, sorted and quoted."""
    ordered = sorted(names)
    shown = ", ".join(quote(n) for n in ordered[:limit])
    return shown + (f" and {len(ordered) - limit} more" if len(ordered) > limit else "")
