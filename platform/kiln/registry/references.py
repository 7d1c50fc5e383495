"""Model references and names, parsed and validated in exactly one place.

A reference names one version of a model:

- ``digits:3``            version 3 of ``digits``
- ``digits@production``   whatever version the alias ``production`` points at
- ``digits``              shorthand for ``digits@production``

Model and alias names use lowercase letters, digits, ``-``, ``_`` and ``.``, start with a
letter or digit and are at most 64 characters long, so they are safe in file names, URLs and
Prometheus labels alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kiln.errors import InvalidReference

DEFAULT_ALIAS = "production"
MAX_NAME_LENGTH = 64

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_NAME_RULE = (
    "use lowercase letters, digits, '-', '_' or '.', starting with a letter or digit, "
    f"at most {MAX_NAME_LENGTH} characters"
)


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed reference: a model name and either a version number or an alias."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        return f"{self.name}@{self.alias}"


def validate_name(name: str, what: str = "model name") -> str:
    """Return `name` unchanged when it is a legal model (or alias) name.

    Raises `InvalidReference` saying what the rule is, with a suggestion when lower-casing or
    replacing illegal characters would make the name legal.
    """
    if _NAME.fullmatch(name):
        return name
    if not name:
        raise InvalidReference(f"empty {what}: {_NAME_RULE}")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidReference(
            f"{what} '{name[:20]}…' is {len(name)} characters long: {_NAME_RULE}"
        )
    hint = ""
    fixed = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")
    if fixed and _NAME.fullmatch(fixed):
        hint = f"; did you mean '{fixed}'?"
    raise InvalidReference(f"'{name}' is not a valid {what}: {_NAME_RULE}{hint}")


def parse_reference(text: str, *, default_alias: str = DEFAULT_ALIAS) -> Reference:
    """Parse ``name``, ``name:VERSION`` or ``name@ALIAS``.

    A bare name means ``name@default_alias``. Raises `InvalidReference` for anything else,
    with a message that shows the accepted forms.
    """
    text = text.strip()
    forms = "use NAME:VERSION (e.g. digits:3), NAME@ALIAS (e.g. digits@production) or NAME"
    if ":" in text and "@" in text:
        raise InvalidReference(
            f"malformed reference '{text}': give a version or an alias, not both; {forms}"
        )
    if ":" in text:
        name, _, number = text.partition(":")
        validate_name(name)
        if not number.isascii() or not number.isdigit() or int(number) < 1:
            raise InvalidReference(
                f"malformed reference '{text}': the version after ':' must be a positive "
                f"integer; {forms}"
            )
        return Reference(name=name, version=int(number))
    if "@" in text:
        name, _, alias = text.partition("@")
        validate_name(name)
        if not alias:
            raise InvalidReference(f"malformed reference '{text}': no alias after '@'; {forms}")
        validate_name(alias, "alias name")
        return Reference(name=name, alias=alias)
    if not text:
        raise InvalidReference(f"empty reference; {forms}")
    validate_name(text)
    return Reference(name=text, alias=validate_name(default_alias, "alias name"))


def format_version_ranges(versions: list[int]) -> str:
    """``[1, 2, 3, 5, 7, 8]`` -> ``"1-3, 5, 7-8"`` (for messages listing what exists)."""
    parts: list[str] = []
    ordered = sorted(versions)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ", ".join(parts)
