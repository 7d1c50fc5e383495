"""MkDocs hook: fails the build when a relative link in README.md points at no file.

README.md is the repository's front page, not a page of the site, so MkDocs' own link checks
never see it; its links point into docs/ and at benchmarks/RESULTS.md. Checking them here makes
`just docs` and `just lint` (and so CI) catch a page that was moved or renamed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

README = "README.md"
# [text](target) and [text](target "title"); images too. Targets with a scheme are not files.
_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def broken_links(root: Path) -> list[str]:
    """The relative link targets in README.md under `root` that name no existing file."""
    text = (root / README).read_text(encoding="utf-8")
    broken = []
    for target in _LINK.findall(text):
        path = target.split("#", 1)[0]
        if not path or _SCHEME.match(target):
            continue
        if not (root / path).exists():
            broken.append(target)
    return broken


def on_pre_build(config: Any) -> None:
    """MkDocs event: refuse to build while README.md links to a file that does not exist."""
    from mkdocs.exceptions import PluginError

    broken = broken_links(Path(config["config_file_path"]).parent)
    if broken:
        raise PluginError(f"{README} links to files that do not exist: {', '.join(broken)}")
