#!/usr/bin/env bash
# Installs everything a fresh machine lacks to build, test, demo and benchmark reconciler.
# Idempotent: every step checks first, so a second run changes nothing and takes seconds.
set -euo pipefail

log() { printf 'setup: %s\n' "$*"; }

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: must run as root (apt packages, bpffs mount); try: sudo make setup" >&2
        exit 1
    fi
}

# --- apt packages -------------------------------------------------------------------------
# pkg-config + libssl-dev: git2's https transport; iproute2: `ip netns`; git: the git source
# and `git daemon` in tests; iptables/nftables: benchmark baselines; bpftool: inspecting maps;
# python3: socket-level test clients; dnsmasq-base (the binary, no system service) and
# bind9-dnsutils (dig): a real DNS server and client behind a UDP VIP in tests and the demo;
# prometheus: its `promtool check metrics` checks the daemon's /metrics in the tests (the
# package's server is not started); time (GNU time): peak memory of the CLI in `make bench`;
# openssh-client and gnupg: ssh-keygen and gpg sign commits in the signed-commit tests;
# strace: kills applies at each of their writes in the crash tests. libssh2-1-dev: git2's ssh
# transport links the system's libssh2 (.cargo/config.toml). dpkg-dev (dpkg-shlibdeps),
# binutils (strip), init-system-helpers, systemd (systemd-analyze) and lintian: `make deb`
# and the package's test. openssl: self-signed certificates of the https receivers in the
# notification tests.
APT_PACKAGES=(pkg-config libssl-dev openssl libssh2-1-dev iproute2 git iptables nftables bpftool python3 dnsmasq-base bind9-dnsutils prometheus time openssh-client gnupg strace dpkg-dev binutils init-system-helpers systemd lintian)
# kubectl (its kustomize renders deploy/kubernetes in the tests): Debian's kubernetes-client,
# unless the machine has a kubectl already (another package of it would conflict).
command -v kubectl > /dev/null || APT_PACKAGES+=(kubernetes-client)
# `setup.sh demo` (what `make demo` runs): only what the build and the demo need, so that a
# newcomer's first command does not wait for the test suite's tools.
DEMO=false
if [ "${1:-}" = demo ]; then
    DEMO=true
    APT_PACKAGES=(pkg-config libssl-dev libssh2-1-dev iproute2 git python3 dnsmasq-base bind9-dnsutils openssh-client)
fi
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    need_root
    log "installing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Debian starts a package's service on install unless policy-rc.d says no: we want
    # prometheus' promtool, not a Prometheus server on :9090.
    no_services=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        no_services=1
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" || { [ -z "$no_services" ] || rm -f /usr/sbin/policy-rc.d; exit 1; }
    [ -z "$no_services" ] || rm -f /usr/sbin/policy-rc.d
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        systemctl disable --quiet prometheus 2>/dev/null || true
    fi
fi

# --- kubernetes-validate (PyPI): the tests validate the rendered manifests with it ---------
if ! $DEMO && ! command -v kubernetes-validate > /dev/null; then
    log "installing kubernetes-validate (PyPI)"
    python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate
    # pyenv's shims, where its pip does not make them itself.
    if ! command -v kubernetes-validate > /dev/null && command -v pyenv > /dev/null; then
        pyenv rehash
    fi
    command -v kubernetes-validate > /dev/null || { echo "setup: kubernetes-validate is not on PATH after pip install" >&2; exit 1; }
fi

# --- Rust toolchains ----------------------------------------------------------------------
# The BPF crate needs nightly (build-std for bpfel-unknown-none) and its rust-src.
if ! rustup toolchain list | grep -q '^nightly'; then
    log "installing the nightly toolchain"
    rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
    log "adding rust-src to nightly"
    rustup component add rust-src --toolchain nightly
fi
$DEMO || for c in rustfmt clippy; do
    rustup component list --installed | grep -q "^$c" || rustup component add "$c"
    rustup component list --toolchain nightly --installed | grep -q "^$c" ||
        rustup component add "$c" --toolchain nightly
done

# --- bpf-linker against nightly rustc's own LLVM ------------------------------------------
# bpf-linker must link the bitcode rustc emits with the same LLVM major version; building it
# against rustc's libLLVM guarantees that without installing a system LLVM.
llvm_major=$(rustc +nightly -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
if [ -z "$llvm_major" ]; then
    echo "setup: cannot read the LLVM version from 'rustc +nightly -vV'" >&2
    exit 1
fi
linker_ok=false
if command -v bpf-linker >/dev/null 2>&1; then
    stamp="$HOME/.cargo/bpf-linker.llvm"
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$llvm_major" ] && linker_ok=true
fi
if ! $linker_ok; then
    sysroot=$(rustc +nightly --print sysroot)
    libllvm=$(ls "$sysroot"/lib/libLLVM.so.*-rust-*-nightly 2>/dev/null | head -n 1 || true)
    if [ -z "$libllvm" ]; then
        echo "setup: no libLLVM.so.*-rust-*-nightly in $sysroot/lib" >&2
        exit 1
    fi
    prefix="$HOME/.cache/reconciler/llvm-prefix"
    mkdir -p "$prefix/lib"
    ln -sf "$libllvm" "$prefix/lib/libLLVM.so"
    log "building bpf-linker against $libllvm (LLVM $llvm_major, about 90 s)"
    LLVM_PREFIX="$prefix" cargo +nightly install --locked bpf-linker --force \
        --no-default-features --features "llvm-$llvm_major"
    echo "$llvm_major" >"$HOME/.cargo/bpf-linker.llvm"
fi

# --- bpffs --------------------------------------------------------------------------------
# Mode 0700 rather than the kernel's default 1777: reconciler refuses pin directories that
# others can write. RECONCILER_BPFFS points this step elsewhere (the tests use it).
bpffs=${RECONCILER_BPFFS:-/sys/fs/bpf}
if ! awk -v dir="$bpffs" '$2 == dir && $3 == "bpf" { found = 1 } END { exit !found }' /proc/self/mounts; then
    need_root
    log "mounting bpffs at $bpffs (mode 0700)"
    mkdir -p "$bpffs"
    mount -t bpf -o mode=0700 bpf "$bpffs"
else
    # An existing mount is someone else's choice: leave it, but say what it means.
    mode=$(stat -c %a "$bpffs")
    if (( 8#$mode & 8#022 )); then
        echo "setup: warning: $bpffs is mode $mode; reconciler refuses pin directories others" \
            "can write, mount with mode=0700" >&2
    fi
fi

log "ok"
