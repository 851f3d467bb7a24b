#!/usr/bin/env bash
# Install the real node binaries that KOFO's real-node tests (pytest -m realnode) run against,
# into <repo>/.nodes/bin (git-ignored).
#
#   scripts/install-nodes.sh              # all of: geth btcd cometbft litecoind chromium
#   scripts/install-nodes.sh geth btcd    # only those
#
# Idempotent: a binary already present at the pinned version is left alone, so a second run
# only asks each binary for its version. A binary at any other version is re-installed.
# Go binaries are built with `go install` (GOBIN points at .nodes/bin; GOPATH, GOMODCACHE and
# GOCACHE stay at Go's defaults so CI can cache them with the usual Go cache keys).
# litecoind comes from the Debian package and is symlinked into .nodes/bin.
# chromium (with chromium-driver, for the dashboard's real-browser test) comes from Debian too:
# /usr/bin/chromium and /usr/bin/chromedriver, symlinked into .nodes/bin.
set -euo pipefail

# Pinned versions. Tests rely on these exact behaviours (flags, RPC dialects), so a bump is a
# deliberate change made here and checked by running the real-node tests.
readonly GETH_VERSION="1.17.10"
readonly BTCD_VERSION="0.26.0"
readonly COMETBFT_VERSION="0.38.17"
readonly LITECOIND_VERSION="0.21.2.1"
# Debian bookworm-security's build; chromium-driver is always the same version as chromium.
# When the security archive moves on (it keeps only the newest build), bump both lines.
readonly CHROMIUM_VERSION="156.0.8078.129"
readonly CHROMIUM_DEB_VERSION="${CHROMIUM_VERSION}-1~deb12u1"

readonly GETH_PKG="github.com/ethereum/go-ethereum/cmd/geth@v${GETH_VERSION}"
readonly BTCD_PKG="github.com/btcsuite/btcd@v${BTCD_VERSION}"
readonly COMETBFT_PKG="github.com/cometbft/cometbft/cmd/cometbft@v${COMETBFT_VERSION}"

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
readonly ROOT
readonly BIN="${ROOT}/.nodes/bin"

log() { printf '[install-nodes] %s\n' "$*"; }
die() {
    printf '[install-nodes] ERROR: %s\n' "$*" >&2
    exit 1
}

# "Litecoin Core version v0.21.2.1-gfce5d459..." -> "0.21.2.1"
litecoind_version() {
    "$1" --version 2>/dev/null | sed -n '1s/.* v\{0,1\}\([0-9][0-9.]*\).*/\1/p' || true
}

# Print the version a binary reports, reduced to the bare dotted number, or nothing if the
# binary is missing or does not run.
installed_version() {
    local name="$1" exe="${BIN}/$1" out
    [[ -x "${exe}" ]] || return 0
    case "${name}" in
        geth) out="$("${exe}" version 2>/dev/null | sed -n 's/^Version: *\([0-9.]*\).*/\1/p' || true)" ;;
        btcd) out="$("${exe}" --version 2>/dev/null | sed -n 's/^btcd version \([0-9.]*\).*/\1/p' || true)" ;;
        cometbft) out="$("${exe}" version 2>/dev/null | sed -n 's/^v\{0,1\}\([0-9.]*\).*/\1/p' || true)" ;;
        litecoind) out="$(litecoind_version "${exe}")" ;;
        # "Chromium 156.0.8078.129 built on Debian ..."; the driver must report the same.
        chromium)
            out="$("${exe}" --version 2>/dev/null | sed -n 's/^Chromium \([0-9.]*\).*/\1/p' || true)"
            [[ -x "${BIN}/chromedriver" ]] || out=""
            [[ "$("${BIN}/chromedriver" --version 2>/dev/null | sed -n 's/^ChromeDriver \([0-9.]*\).*/\1/p' || true)" == "${out}" ]] || out=""
            ;;
        *) die "unknown node '${name}'" ;;
    esac
    printf '%s' "${out}" || true
}

pinned_version() {
    case "$1" in
        geth) printf '%s' "${GETH_VERSION}" ;;
        btcd) printf '%s' "${BTCD_VERSION}" ;;
        cometbft) printf '%s' "${COMETBFT_VERSION}" ;;
        litecoind) printf '%s' "${LITECOIND_VERSION}" ;;
        chromium) printf '%s' "${CHROMIUM_VERSION}" ;;
        *) die "unknown node '$1' (expected one of: geth btcd cometbft litecoind chromium)" ;;
    esac
}

go_package() {
    case "$1" in
        geth) printf '%s' "${GETH_PKG}" ;;
        btcd) printf '%s' "${BTCD_PKG}" ;;
        cometbft) printf '%s' "${COMETBFT_PKG}" ;;
    esac
}

check_version() {
    local name="$1" want have
    want="$(pinned_version "${name}")"
    have="$(installed_version "${name}")"
    [[ "${have}" == "${want}" ]] ||
        die "${name} at ${BIN}/${name} reports version '${have:-<none>}', expected ${want}"
}

install_go_binary() {
    local name="$1" pkg start
    pkg="$(go_package "${name}")"
    command -v go >/dev/null 2>&1 ||
        die "${name}: 'go' is not on PATH; install Go >= 1.25 (the go.mod of geth v1.17.10 and btcd v0.26.0 require it) and re-run"
    log "${name}: go install ${pkg} (first build takes a few minutes; later ones use Go's cache)"
    start="${SECONDS}"
    # `go install` refuses to overwrite a file it did not build (a wrapper script, a copy).
    rm -f "${BIN:?}/${name}"
    # GOBIN only: the module and build caches stay where Go keeps them by default.
    GOBIN="${BIN}" go install "${pkg}" || die "${name}: 'go install ${pkg}' failed (see output above)"
    log "${name}: built in $((SECONDS - start)) s"
}

# Run a privileged command: directly as root, through sudo otherwise.
as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

install_litecoind() {
    command -v apt-get >/dev/null 2>&1 ||
        die "litecoind: apt-get not found; install litecoind ${LITECOIND_VERSION} yourself and symlink it into ${BIN}"
    log "litecoind: apt-get install litecoind"
    export DEBIAN_FRONTEND=noninteractive
    # Package lists are refreshed only when the install needs it: `apt-get update` is slow and
    # touches the network, and the lists are usually already current.
    if ! as_root apt-get install -y --no-install-recommends litecoind; then
        log "litecoind: install failed with the current package lists; running apt-get update"
        as_root apt-get update || die "litecoind: apt-get update failed"
        as_root apt-get install -y --no-install-recommends litecoind ||
            die "litecoind: apt-get install litecoind failed (is the Debian 'main' archive enabled?)"
    fi
}

install_chromium() {
    command -v apt-get >/dev/null 2>&1 ||
        die "chromium: apt-get not found; install chromium and chromedriver ${CHROMIUM_VERSION} yourself and symlink them into ${BIN}"
    local pkgs=("chromium=${CHROMIUM_DEB_VERSION}" "chromium-driver=${CHROMIUM_DEB_VERSION}")
    log "chromium: apt-get install ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! as_root apt-get install -y --no-install-recommends "${pkgs[@]}"; then
        log "chromium: install failed with the current package lists; running apt-get update"
        as_root apt-get update || die "chromium: apt-get update failed"
        as_root apt-get install -y --no-install-recommends "${pkgs[@]}" ||
            die "chromium: apt-get install ${pkgs[*]} failed (is bookworm-security enabled? has it moved past ${CHROMIUM_DEB_VERSION}? then bump CHROMIUM_VERSION)"
    fi
}

link_chromium_binaries() {
    local tool
    for tool in chromium chromedriver; do
        [[ -x "/usr/bin/${tool}" ]] || die "chromium: /usr/bin/${tool} missing after install"
        if [[ "$(readlink "${BIN}/${tool}" 2>/dev/null)" != "/usr/bin/${tool}" ]]; then
            ln -sfn "/usr/bin/${tool}" "${BIN}/${tool}"
            log "chromium: linked ${BIN}/${tool} -> /usr/bin/${tool}"
        fi
    done
}

# Debian's /usr/bin/litecoind is a shell wrapper that writes ~/.litecoin/litecoin.conf (a random
# rpcpassword) before exec'ing the real daemon in /usr/lib/litecoin. Tests always pass -datadir
# and their own credentials, so link the real binary and leave the user's home untouched.
litecoind_target() {
    if [[ -x /usr/lib/litecoin/litecoind ]]; then
        printf '%s' /usr/lib/litecoin/litecoind
    else
        printf '%s' /usr/bin/litecoind
    fi
}

link_litecoin_binaries() {
    local tool target
    for tool in litecoind litecoin-cli; do
        if [[ "${tool}" == litecoind ]]; then
            target="$(litecoind_target)"
            [[ -x "${target}" ]] || die "litecoind: ${target} missing after install"
        else
            target="/usr/bin/${tool}"
            [[ -x "${target}" ]] || continue
        fi
        if [[ "$(readlink "${BIN}/${tool}" 2>/dev/null)" != "${target}" ]]; then
            ln -sfn "${target}" "${BIN}/${tool}"
            log "litecoind: linked ${BIN}/${tool} -> ${target}"
        fi
    done
}

ensure() {
    local name="$1" want have target
    want="$(pinned_version "${name}")"
    have="$(installed_version "${name}")"
    if [[ "${have}" == "${want}" ]]; then
        # An older run may have linked Debian's wrapper; re-point it (a no-op when right).
        [[ "${name}" != litecoind ]] || link_litecoin_binaries
        [[ "${name}" != chromium ]] || link_chromium_binaries
        log "${name} ${want}: already installed"
        return
    fi
    if [[ -n "${have}" ]]; then
        log "${name}: found version ${have}, want ${want}; re-installing"
    else
        log "${name}: not installed; installing ${want}"
    fi
    case "${name}" in
        litecoind)
            # The system binary may already be right; only the link is missing then.
            target="$(litecoind_target)"
            if [[ ! -x "${target}" || "$(litecoind_version "${target}")" != "${want}" ]]; then
                install_litecoind
            fi
            link_litecoin_binaries
            ;;
        chromium)
            install_chromium
            link_chromium_binaries
            ;;
        *) install_go_binary "${name}" ;;
    esac
    check_version "${name}"
    log "${name} ${want}: installed at ${BIN}/${name}"
}

main() {
    local nodes=("$@") name
    [[ ${#nodes[@]} -gt 0 ]] || nodes=(geth btcd cometbft litecoind chromium)
    for name in "${nodes[@]}"; do
        pinned_version "${name}" >/dev/null
    done
    mkdir -p "${BIN}"
    for name in "${nodes[@]}"; do
        ensure "${name}"
    done
    log "done: ${BIN}"
}

main "$@"
