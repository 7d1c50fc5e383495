#!/usr/bin/env bash
# Build Kiln's container images from deploy/Containerfile: `just image [TARGET...] [--rebuild]`.
#
#   deploy/image.sh                 both images: localhost/kiln-serve:V and localhost/kiln-train:V
#   deploy/image.sh serve           the serving image only (train: the trainer/CLI image only)
#   deploy/image.sh --rebuild ...   build even when the image is up to date
#   deploy/image.sh --base          make the Debian base image only (when it does not exist)
#   deploy/image.sh --name TARGET   print the image's name and exit
#   deploy/image.sh --podman-flags  print the global podman flags this host needs, one a line
#
# With podman (else docker where a daemon answers; KILN_IMAGE_TOOL picks one). No base image
# is pulled: the Debian base (localhost/debian-local:bookworm) is made here once with
# debootstrap, as root. An image whose inputs (build context, Containerfile, base image, build
# arguments) hash to its `io.kiln.inputs` label is up to date and is not rebuilt.
#
# Settings (environment): KILN_IMAGE_TOOL (podman|docker), KILN_IMAGE_BASE (a Debian bookworm
# image with python3, python3-venv, ca-certificates), KILN_DEBIAN_MIRROR (debootstrap's mirror,
# default http://deb.debian.org/debian), KILN_IMAGE_EXTRAS (the serve image's extras, default
# postgres,s3), KILN_TORCH_INDEX_URL (the train image's torch index, e.g.
# https://download.pytorch.org/whl/cpu, where the host's pip has no CPU wheel of its own),
# KILN_PODMAN_FLAGS (replaces the global podman flags detected below).
# Exit codes: 0 built or up to date, 2 bad arguments, 3 this host cannot build (the message
# says what is missing), 1 a build failed.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)
base=${KILN_IMAGE_BASE:-localhost/debian-local:bookworm}
mirror=${KILN_DEBIAN_MIRROR:-http://deb.debian.org/debian}
extras=${KILN_IMAGE_EXTRAS-postgres,s3}
torch_index=${KILN_TORCH_INDEX_URL:-}

die() { echo "deploy/image.sh: $2" >&2; exit "$1"; }

image_name() { echo "localhost/kiln-$1:$version"; }

pick_tool() {
    if [ -n "${KILN_IMAGE_TOOL:-}" ]; then
        command -v "$KILN_IMAGE_TOOL" >/dev/null \
            || die 3 "KILN_IMAGE_TOOL=$KILN_IMAGE_TOOL is not installed"
        echo "$KILN_IMAGE_TOOL"
    elif command -v podman >/dev/null; then
        echo podman
    elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
        echo docker
    else
        die 3 "neither podman nor a running docker daemon was found: apt-get install podman runc"
    fi
}

# crun (podman's default runtime) fails on hosts with cgroups v1 or hybrid: runc and the
# cgroupfs manager work there.
podman_flags() {
    if [ -n "${KILN_PODMAN_FLAGS+set}" ]; then
        printf '%s\n' $KILN_PODMAN_FLAGS
    elif [ ! -f /sys/fs/cgroup/cgroup.controllers ] && command -v runc >/dev/null; then
        printf '%s\n' --runtime runc --cgroup-manager cgroupfs
    fi
}

targets=()
rebuild=0
base_only=0
while [ $# -gt 0 ]; do
    case "$1" in
        serve|train) targets+=("$1") ;;
        --rebuild) rebuild=1 ;;
        --base) base_only=1 ;;
        --name)
            [ "${2:-}" = serve ] || [ "${2:-}" = train ] || die 2 "--name takes serve or train"
            image_name "$2"; exit 0 ;;
        --podman-flags) podman_flags; exit 0 ;;
        -h|--help) sed -n '2,/^set /p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die 2 "unknown argument '$1': expected serve, train, --rebuild, --base, --name TARGET or --podman-flags" ;;
    esac
    shift
done
[ ${#targets[@]} -gt 0 ] || targets=(serve train)

tool=$(pick_tool) || exit $?
engine=("$tool")
if [ "$tool" = podman ]; then
    mapfile -t flags < <(podman_flags)
    engine+=("${flags[@]}")
fi

image_exists() { "${engine[@]}" image inspect "$1" >/dev/null 2>&1; }

make_base() {
    image_exists "$base" && return 0
    [ "$base" = localhost/debian-local:bookworm ] \
        || die 3 "base image $base does not exist (unset KILN_IMAGE_BASE to make the default one)"
    command -v debootstrap >/dev/null \
        || die 3 "no base image $base and no debootstrap to make it: apt-get install debootstrap"
    [ "$(id -u)" = 0 ] || die 3 "making the base image $base needs root (debootstrap)"
    echo "making $base with debootstrap from $mirror"
    local dir=$scratch/base
    mkdir -p "$dir"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$dir/root" "$mirror" >"$dir/debootstrap.log" 2>&1 \
        || { tail -n 20 "$dir/debootstrap.log" >&2; die 1 "debootstrap failed"; }
    # What an image never uses: package caches and lists, manuals, translations; the
    # packages' copyright files stay.
    rm -rf "$dir"/root/var/cache/apt/archives/*.deb "$dir"/root/var/lib/apt/lists/* \
        "$dir"/root/usr/share/man "$dir"/root/usr/share/info "$dir"/root/usr/share/locale/*
    find "$dir/root/usr/share/doc" -type f ! -name copyright -delete
    tar -C "$dir/root" -c . | "${engine[@]}" import --change 'CMD ["/bin/bash"]' - "$base" >/dev/null
    rm -rf "$dir"
}

# The build context: only what the image installs (a few MB, not the checkout's virtualenv),
# from git where there is one (committed and new files, not ignored ones).
make_context() {
    local ctx=$1
    local files=(pyproject.toml constraints.txt README.md LICENSE)
    if git rev-parse --git-dir >/dev/null 2>&1; then
        mapfile -t -O ${#files[@]} files < <(git ls-files -co --exclude-standard -- platform engines)
    else
        mapfile -t -O ${#files[@]} files < <(find platform engines -type f ! -path '*/__pycache__/*')
    fi
    for f in "${files[@]}"; do
        [ -f "$f" ] && cp --parents "$f" "$ctx/"  # a tracked file deleted in the work tree: skip
    done
    cp deploy/Containerfile "$ctx/Containerfile"
}

# The host's package index, as its own pip sees it (environment first, then pip.conf), passed
# into the build: local folders (file:// indexes, find-links) are mounted read-only where pip
# expects them, and the CA bundle too (TLS may be intercepted).
pip_settings() {
    local py=python3
    [ -x .venv/bin/python ] && py=.venv/bin/python
    "$py" - <<'EOF'
import os
import subprocess
import sys

listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                        capture_output=True, text=True, check=False).stdout
config = {}
for line in listed.splitlines():
    key, _, value = line.partition("=")
    section, _, name = key.rpartition(".")
    if section in ("global", "install"):  # install's own settings win over global's
        if section == "install" or name not in config:
            config[name] = value.strip("'\"")
for name in ("index-url", "extra-index-url", "find-links", "cert"):
    value = os.environ.get("PIP_" + name.upper().replace("-", "_"), config.get(name, ""))
    print(f"{name}={value}")
EOF
}

build_args=()
volumes=()
setup_pip() {
    local line name value url path
    while IFS= read -r line; do
        name=${line%%=*}
        value=${line#*=}
        [ -n "$value" ] || continue
        case "$name" in
            index-url) build_args+=(--build-arg "PIP_INDEX_URL=$value") ;;
            extra-index-url) build_args+=(--build-arg "PIP_EXTRA_INDEX_URL=$value") ;;
            find-links) build_args+=(--build-arg "PIP_FIND_LINKS=$value") ;;
            cert) [ -f "$value" ] && volumes+=(-v "$value:$value:ro") \
                && build_args+=(--build-arg "PIP_CERT=$value") ;;
        esac
        [ "$name" = cert ] && continue
        for url in $value; do
            path=${url#file://}
            [ "${path:0:1}" = / ] && [ -d "$path" ] || continue
            # a simple index's pages link to ../../files: mount the folder that holds it
            [ "$(basename "$path")" = simple ] && path=$(dirname "$path")
            volumes+=(-v "$path:$path:ro")
        done
    done < <(pip_settings)
    if [ "$tool" = docker ] && [ ${#volumes[@]} -gt 0 ]; then
        # docker build mounts nothing from the host: the local folders are not reachable
        echo "note: docker build cannot mount ${volumes[*]}; the build uses the indexes it can reach" >&2
        volumes=()
    fi
}

inputs_hash() {
    local ctx=$1 target=$2 base_id
    base_id=$("${engine[@]}" image inspect --format '{{.Id}}' "$base")
    {
        (cd "$ctx" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
        echo "base $base_id target $target extras $extras torch-index $torch_index"
    } | sha256sum | cut -c1-64
}

build() {
    local target=$1 ctx=$2 name hash have started
    name=$(image_name "$target")
    hash=$(inputs_hash "$ctx" "$target")
    have=$("${engine[@]}" image inspect --format '{{ index .Config.Labels "io.kiln.inputs" }}' \
        "$name" 2>/dev/null || true)
    if [ "$rebuild" = 0 ] && [ "$have" = "$hash" ]; then
        echo "$name is up to date (inputs ${hash:0:12})"
        return 0
    fi
    echo "building $name (target $target, inputs ${hash:0:12}) with $tool"
    local extra=()
    # HEALTHCHECK is part of the docker image format only; podman's default (OCI) drops it.
    [ "$tool" = podman ] && extra+=(--format docker --ulimit nofile=1024:1024 --ulimit nproc=4096:4096)
    started=$SECONDS
    "${engine[@]}" build "${extra[@]}" "${volumes[@]}" "${build_args[@]}" \
        --network host --target "$target" --build-arg "BASE=$base" \
        --build-arg "EXTRAS=$extras" --build-arg "TORCH_INDEX_URL=$torch_index" \
        --label "io.kiln.inputs=$hash" \
        --label "org.opencontainers.image.title=kiln-$target" \
        --label "org.opencontainers.image.version=$version" \
        --label "org.opencontainers.image.licenses=Apache-2.0" \
        -t "$name" -f "$ctx/Containerfile" "$ctx" || die 1 "building $name failed"
    local size
    size=$("${engine[@]}" image inspect --format '{{.Size}}' "$name")
    echo "built $name in $((SECONDS - started)) s: $((size / 1000000)) MB"
}

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
started=$SECONDS
make_base
[ "$base_only" = 0 ] || { echo "$base is ready ($((SECONDS - started)) s)"; exit 0; }
setup_pip
ctx=$scratch/context
mkdir "$ctx"
make_context "$ctx"
for target in "${targets[@]}"; do
    build "$target" "$ctx"
done
