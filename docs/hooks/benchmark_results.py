"""MkDocs hook: publishes benchmarks/RESULTS.md as the site page reference/benchmarks.md.

Benchmark figures live in one file, benchmarks/RESULTS.md, next to the scripts that produce
them; the docs pages link here instead of quoting numbers that would go stale. The page is
copied at build time, so the site always shows the recorded file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PAGE = "reference/benchmarks.md"
SOURCE = Path("benchmarks") / "RESULTS.md"

_NOTE = (
    "\n!!! note\n"
    "    This page is `benchmarks/RESULTS.md`, copied into the site when it is built. Each "
    "section names the script that produced it (`just bench NAME` runs one), the machine and "
    "the date.\n"
)


def on_files(files: Any, config: Any) -> Any:
    """MkDocs event: add the results page to the site's files before the nav is built."""
    from mkdocs.structure.files import File

    root = Path(config["config_file_path"]).parent
    text = (root / SOURCE).read_text(encoding="utf-8")
    title, _, rest = text.partition("\n")
    files.append(File.generated(config, PAGE, content=f"{title}\n{_NOTE}{rest}"))
    return files


def on_serve(server: Any, config: Any, builder: Any) -> Any:
    """MkDocs event: rebuild the preview when the results file changes."""
    server.watch(str(Path(config["config_file_path"]).parent / SOURCE))
    return server
