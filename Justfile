# Kiln's developer entry points. `just demo` and `just test` set everything up themselves.

set shell := ["bash", "-euo", "pipefail", "-c"]

python := env_var_or_default("KILN_PYTHON", "python3")
venv := ".venv"
bin := venv / "bin"
stamp := venv / ".kiln-installed"

# list the recipes
default:
    @just --list

# create .venv and install the pinned dependencies (idempotent: reinstalls only when the pins change)
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
    if [ -f {{stamp}} ] && [ "$(cat {{stamp}})" = "$want" ] && [ -x {{bin}}/kiln ]; then
        exit 0
    fi
    if [ ! -x {{bin}}/python ]; then
        echo "creating {{venv}} with $({{python}} --version)"
        {{python}} -m venv {{venv}}
    fi
    # torch first, by itself: an unpinned resolver walk would pull a multi-GB CUDA build.
    {{bin}}/python -m pip install -q --disable-pip-version-check -c constraints.txt torch==2.13.0
    {{bin}}/python -m pip install -q --disable-pip-version-check -c constraints.txt setuptools
    {{bin}}/python -m pip install -q --disable-pip-version-check --no-build-isolation \
        -c constraints.txt -e '.[train,bento,dev]'
    echo "$want" > {{stamp}}
    echo "environment ready: {{venv}}"

# run the whole loop on the embedded defaults (SQLite registry in ./.kiln, bundled data, CPU)
demo *ARGS: setup
    {{bin}}/kiln demo {{ARGS}}

# run the test suite
test *ARGS: setup
    {{bin}}/python -m pytest {{ARGS}}

# ruff, mypy (strict) and the import-linter layer contracts
lint: setup
    {{bin}}/ruff check platform engines tests benchmarks
    {{bin}}/ruff format --check platform engines tests benchmarks
    {{bin}}/mypy
    {{bin}}/lint-imports
    {{bin}}/python proto/generate.py --check

# regenerate the gRPC code in platform/kiln/serving/grpc/generated/ from proto/
proto: setup
    {{bin}}/python proto/generate.py

# format the code
fmt: setup
    {{bin}}/ruff format platform engines tests benchmarks
    {{bin}}/ruff check --fix platform engines tests benchmarks

# run a benchmark and print its table: train_throughput, engines, registry, serving, traffic
# (results are recorded in benchmarks/RESULTS.md)
bench NAME="train_throughput" *ARGS: setup
    {{bin}}/python benchmarks/{{NAME}}.py {{ARGS}}

# remove local state (registry, artifacts, runs) — not the virtualenv
clean:
    rm -rf .kiln
