#!/usr/bin/env bash
# `make fuzz`: runs the cargo fuzz targets in fuzz/ for FUZZ_SECONDS seconds each (default 60):
#   definitions    service definition files: load::parse and validate::validate
#   daemon_config  the daemon's configuration: daemon::config::parse
#   saved_plan     saved plan files: plan::from_saved, render_text, to_saved round trip
# FUZZ_TARGETS="definitions saved_plan" runs only those. Exits non-zero if any target finds a
# crash (a panic, an assertion, a sanitizer report, a timeout or running out of memory),
# naming the input that triggers it.
#
# Corpora grow in fuzz/corpus/TARGET (git-ignored, kept between runs); they are seeded from
# the repository's own files and from fuzz/seeds/TARGET (committed). Crashes are written to
# fuzz/artifacts/TARGET, each run's output to fuzz/target/fuzz-logs/TARGET.log.
set -euo pipefail

cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
ROOT=$PWD
SECONDS_PER_TARGET=${FUZZ_SECONDS:-60}
TARGETS=${FUZZ_TARGETS:-definitions daemon_config saved_plan}
LOGS=fuzz/target/fuzz-logs

log() { printf 'fuzz: %s\n' "$*"; }
die() { printf 'fuzz: %s\n' "$*" >&2; exit 1; }

case $SECONDS_PER_TARGET in
    '' | *[!0-9]* | 0) die "FUZZ_SECONDS must be a whole number of seconds, not '$SECONDS_PER_TARGET'" ;;
esac

# Largest input per target: definition and configuration files are small (the loader refuses
# over 8 MiB anyway); a saved plan holds every desired map entry.
max_len() {
    case $1 in
        saved_plan) echo $((1 << 20)) ;;
        *) echo $((64 << 10)) ;;
    esac
}

# --- tools --------------------------------------------------------------------------------
if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi
rustup toolchain list | grep -q '^nightly' || die "no nightly toolchain; run 'make setup' first"

# --- seed corpora -------------------------------------------------------------------------
# Copied under names derived from their paths, so a second run overwrites instead of adding.
seed() { # seed TARGET FILE...
    local target=$1 file
    shift
    mkdir -p "fuzz/corpus/$target"
    for file in "$@"; do
        cp "$file" "fuzz/corpus/$target/seed-$(printf '%s' "$file" | tr '/' '-')"
    done
}

# Service definitions: every invalid case the tests know, and the examples.
mapfile -t invalid < <(find tests/invalid -name '*.yaml' | sort)
mapfile -t examples < <(find examples/policies \( -name '*.yaml' -o -name '*.yml' \) | sort)
seed definitions "${invalid[@]}" "${examples[@]}"

# Daemon configurations: docs/daemon.md's example, the package's and the DaemonSet's
# (fuzz/seeds has more).
mkdir -p fuzz/corpus/daemon_config
awk '/^```yaml$/ { block = ""; inside = 1; next }
     /^```$/ && inside { if (block ~ /(^|\n)source:/) { printf "%s", block; exit } inside = 0; next }
     inside { block = block $0 "\n" }' docs/daemon.md >fuzz/corpus/daemon_config/seed-docs-daemon.md.yaml
cp deploy/config.example.yaml fuzz/corpus/daemon_config/seed-deploy-config.example.yaml
cp deploy/kubernetes/config.yaml fuzz/corpus/daemon_config/seed-deploy-kubernetes-config.yaml
[ -s fuzz/corpus/daemon_config/seed-docs-daemon.md.yaml ] ||
    log "warning: no configuration example found in docs/daemon.md"

# Saved plans: fuzz/seeds/saved_plan holds two; when the reconciler binary is built, one made
# now too, in case the format moved on since they were written. The pin path never exists,
# so this plans an install without touching BPF.
if [ -x target/debug/reconciler ]; then
    mkdir -p fuzz/corpus/saved_plan
    target/debug/reconciler plan --dir examples/policies \
        --pin-path /sys/fs/bpf/reconciler-fuzz-seed-none \
        --out fuzz/corpus/saved_plan/seed-install-examples.json >/dev/null ||
        log "warning: could not make a fresh saved plan; using fuzz/seeds/saved_plan only"
fi

# --- build and run ------------------------------------------------------------------------
# The committed fuzz/Cargo.lock is what is built (cargo fuzz has no --locked: cargo metadata
# checks it first), so a run leaves the tree as it found it.
(cd fuzz && cargo +nightly metadata --locked --format-version 1 >/dev/null) ||
    die "fuzz/Cargo.lock does not match the workspace's dependencies; update it with" \
        "'(cd fuzz && cargo +nightly metadata --format-version 1 >/dev/null)' and commit it"
# -a: debug assertions and overflow checks, so an arithmetic overflow is a crash too.
log "building the fuzz targets (cargo +nightly fuzz build, release with debug assertions)"
(cd fuzz && cargo +nightly fuzz build -O -a)
git diff --quiet -- fuzz/Cargo.lock || die "the fuzz build changed fuzz/Cargo.lock"

mkdir -p "$LOGS"
failed=()
for target in $TARGETS; do
    [ -f "fuzz/fuzz_targets/$target.rs" ] || die "no fuzz target '$target' (fuzz/fuzz_targets)"
    mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
    seeds=()
    [ -d "fuzz/seeds/$target" ] && seeds=("$ROOT/fuzz/seeds/$target")
    log "running $target for ${SECONDS_PER_TARGET}s (output: $LOGS/$target.log)"
    status=0
    # libFuzzer writes new inputs to the first directory only; fuzz/seeds stays as committed.
    # -timeout: one input taking 30 s is a hang, reported like a crash.
    (cd fuzz && cargo +nightly fuzz run -O -a "$target" \
        "$ROOT/fuzz/corpus/$target" "${seeds[@]}" -- \
        -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 \
        -max_len="$(max_len "$target")" -timeout=30 -print_final_stats=1) \
        >"$LOGS/$target.log" 2>&1 || status=$?
    # libFuzzer's closing lines: "Done N runs in S second(s)" and the final stats.
    grep -E '^Done [0-9]+ runs|^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)|^#[0-9]+ *DONE' \
        "$LOGS/$target.log" | sed "s/^/fuzz: $target: /" || true
    if [ "$status" -ne 0 ]; then
        failed+=("$target")
        log "$target FAILED (exit $status); what went wrong (all of it in $LOGS/$target.log):"
        # The panic and its message, or the sanitizer's, timeout's or memory limit's report.
        grep -E -A2 "panicked at|==[0-9]+== ?ERROR|^SUMMARY:|ALARM:|out-of-memory" \
            "$LOGS/$target.log" | grep -vE '^ +#[0-9]+ ' | head -n 20 | sed 's/^/    /' || true
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$LOGS/$target.log" | tail -n 1)
        if [ -n "$artifact" ]; then
            case $artifact in /*) ;; *) artifact="$ROOT/fuzz/$artifact" ;; esac
            log "$target: the input is in ${artifact#"$ROOT"/}"
            log "reproduce: (cd fuzz && cargo +nightly fuzz run -O -a $target $artifact)"
            log "minimise:  (cd fuzz && cargo +nightly fuzz tmin -O -a $target $artifact)"
        else
            log "$target: no input was written; see $LOGS/$target.log"
        fi
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    die "crashes found in: ${failed[*]} (inputs under fuzz/artifacts/)"
fi
log "no crashes in ${TARGETS// /, } (${SECONDS_PER_TARGET}s each)"
