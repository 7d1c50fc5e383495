"""Model references and names, parsed and validated in exactly one place.

A reference names one version of a model:

- ``digits:3``            version 3 of ``digits``
- ``digits@production``   whatever version the alias ``production`` points at
- ``digits``              shorthand for ``digits@production``

Model and alias names use lowercase letters, digits, ``-``, ``_`` and ``.``, start with a
letter or digit and are at most 64 characters long, so they are safe in file names, URLs and
Prometheus labels alike. Version numbers are 1 to `MAX_VERSION` (2**63 - 1, what a database
integer holds); anything else is an `InvalidReference`, never an overflow further down.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kiln.errors import InvalidReference, quote

DEFAULT_ALIAS = "production"
MAX_NAME_LENGTH = 64
MAX_VERSION = 2**63 - 1
_MAX_VERSION_DIGITS = len(str(MAX_VERSION))
_VERSION_RULE = f"a version is a positive integer, at most {MAX_VERSION}"

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

    def __post_init__(self) -> None:
        if self.version is not None:
            check_version(self.version)

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
        raise InvalidReference(f"{what} {quote(name, 20)} is too long: {_NAME_RULE}")
    hint = ""
    fixed = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")
    if fixed and _NAME.fullmatch(fixed):
        hint = f"; did you mean '{fixed}'?"
    raise InvalidReference(f"{quote(name)} is not a valid {what}: {_NAME_RULE}{hint}")


def check_version(version: int) -> int:
    """Return `version` when it is a possible version number (1 to `MAX_VERSION`).

    Raises `InvalidReference` otherwise: a number past a database integer would overflow in
    the query instead of simply not existing.
    """
    if isinstance(version, bool) or not isinstance(version, int):
        raise InvalidReference(f"a version is a positive integer, not {quote(repr(version))}")
    if not 1 <= version <= MAX_VERSION:
        # str() of an int past 4,300 digits raises: say how big it is instead.
        shown = str(version) if version.bit_length() < 100 else f"of {version.bit_length()} bits"
        raise InvalidReference(f"version {shown} is out of range: {_VERSION_RULE}")
    return version


def parse_version(text: str, what: str = "version") -> int:
    """A version number written as decimal digits (``"3"``), checked like `check_version`.

    For anything that receives a version as text (a reference, KServe's ``model_version``).
    Counts the digits before converting: Python's int() refuses more than 4,300 of them with
    a ValueError, and a number that long is no version anyway.
    """
    digits = text.strip()
    if not digits.isascii() or not digits.isdigit():
        raise InvalidReference(f"{what} {quote(text, 24)} is not a positive integer")
    significant = digits.lstrip("0")
    if len(significant) > _MAX_VERSION_DIGITS or not significant:
        raise InvalidReference(f"{what} {quote(text, 24)} is out of range: {_VERSION_RULE}")
    try:
        return check_version(int(significant))
    except InvalidReference:
        raise InvalidReference(
            f"{what} {quote(text, 24)} is out of range: {_VERSION_RULE}"
        ) from None


def parse_reference(text: str, *, default_alias: str = DEFAULT_ALIAS) -> Reference:
    """Parse ``name``, ``name:VERSION`` or ``name@ALIAS``.

    A bare name means ``name@default_alias``. Raises `InvalidReference` for anything else,
    with a message that shows the accepted forms.
    """
    text = text.strip()
    forms = "use NAME:VERSION (e.g. digits:3), NAME@ALIAS (e.g. digits@production) or NAME"
    if ":" in text and "@" in text:
        raise InvalidReference(
            f"malformed reference {quote(text)}: give a version or an alias, not both; {forms}"
        )
    if ":" in text:
        name, _, number = text.partition(":")
        validate_name(name)
        try:
            version = parse_version(number, "the version after ':'")
        except InvalidReference as exc:
            raise InvalidReference(f"malformed reference {quote(text)}: {exc}; {forms}") from None
        return Reference(name=name, version=version)
    if "@" in text:
        name, _, alias = text.partition("@")
        validate_name(name)
        if not alias:
            raise InvalidReference(
                f"malformed reference {quote(text)}: no alias after '@'; {forms}"
            )
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
