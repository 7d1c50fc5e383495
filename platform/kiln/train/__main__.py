"""`python -m kiln.train ARGS` is `kiln train ARGS`: the form torchrun starts on every rank
(`torchrun --nproc-per-node 2 -m kiln.train --dataset digits --name digits`).

The CLI sits above this layer, so it is reached through the installed `kiln` console
script's entry point rather than an import: the same function `kiln` runs.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points


def run_command(command: str) -> None:
    """`kiln COMMAND ARGS`, ARGS from this process's command line."""
    (script,) = entry_points(group="console_scripts", name="kiln")
    script.load()([command, *sys.argv[1:]])


def main() -> None:
    run_command("train")


if __name__ == "__main__":
    main()
