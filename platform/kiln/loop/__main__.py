"""`python -m kiln.loop NAME ARGS` is `kiln retrain NAME ARGS`: what each rank of
`kiln retrain --nproc N` runs (`kiln.train.launcher`), and the form torchrun can start
(`torchrun --nproc-per-node 2 -m kiln.loop digits --since 24h`)."""

from __future__ import annotations

from kiln.train.__main__ import run_command

if __name__ == "__main__":
    run_command("retrain")
