#!/usr/bin/env bash
# `make demo`: every feature on the bundled default, in a minute. examples/policies/ becomes a
# git repository of signed commits; the daemon runs in a network namespace of its own with
# the demo cgroup, real backend listeners and DNS servers behind the VIPs; clients in the
# cgroup reach them. Then a backend dies and comes back, one that resets connections is
# ejected, a canary rollout aborts and another completes, and an unsigned commit is refused.
#
# Each step prints the command a user would type and a few lines of what it showed. The
# toolchain, the build and the daemon log to target/demo/ (named when something fails).
# Everything is removed at the end, also on failure or Ctrl-C, and leftovers of an
# interrupted run at the start.
set -euo pipefail
shopt -s inherit_errexit   # a failure inside $(...) fails the demo too

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN="$ROOT/target/debug"
LOGS="$ROOT/target/demo"
NS=reconciler-demo
PIN=/sys/fs/bpf/reconciler-demo
WORK="$ROOT/target/demo/run"   # under the project: no other user can make it first
LISTEN=127.0.0.1:9469
CGROUP_ROOT=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts)
CG="$CGROUP_ROOT/reconciler-demo"
PIDS=()      # processes this demo started, ended by PID
SERVERS=()   # "ADDR PORT PID" of each backend listener
DONE=()      # what was shown to work

if [ -t 1 ]; then
    BOLD=$'\e[1m' DIM=$'\e[2m' GREEN=$'\e[32m' RED=$'\e[31m' RESET=$'\e[0m'
else
    BOLD='' DIM='' GREEN='' RED='' RESET=''
fi
step() { STEP=$*; printf '\n%s== %s%s\n' "$BOLD" "$*" "$RESET"; }
typed() { printf '%s$ %s%s\n' "$DIM" "$*" "$RESET"; }
indent() { sed 's/^/  /'; }
shown() { DONE+=("$1"); }
fail() {
    FAILED=1
    printf '%sdemo failed: %s%s\n' "$RED" "$*" "$RESET" >&2
    printf 'logs: %s (daemon.log: the daemon)\n' "$LOGS" >&2
    [ -s "$LOGS/daemon.log" ] && tail -n 15 "$LOGS/daemon.log" >&2
    exit 1
}

# Every process this demo starts is noted with its start time (in memory, and in a file so
# that a run killed outright is cleaned up by the next); each is ended by its PID, and only
# while that PID is still the process the demo started.
PIDFILE="$LOGS/pids"
start_time() { awk '{ print $22 }' "/proc/$1/stat" 2>/dev/null; }
started() { PIDS+=("$1"); echo "$1 $(start_time "$1")" >>"$PIDFILE"; }
end_noted() { # kills what the pid file names, waits for it (5 s at most), then forgets it
    local pid at deadline=$((SECONDS + 5)) alive=()
    [ -f "$PIDFILE" ] || return 0
    while read -r pid at; do
        [ -n "$at" ] && [ "$(start_time "$pid")" = "$at" ] && kill "$pid" 2>/dev/null && alive+=("$pid")
    done <"$PIDFILE"
    for pid in "${alive[@]}"; do
        while [ -e "/proc/$pid" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.05; done
        [ -e "/proc/$pid" ] && kill -9 "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    rm -f "$PIDFILE"
}
# In a subshell: nothing of the demo's error handling applies, and a second Ctrl-C does not
# stop it halfway.
cleanup() (
    set +e
    trap - ERR
    trap '' INT TERM
    end_noted
    [ -x "$BIN/reconciler" ] && "$BIN/reconciler" uninstall --pin-path "$PIN" >/dev/null 2>&1
    for dir in "$CG"/*/; do [ -d "$dir" ] && rmdir "$dir" 2>/dev/null; done
    rmdir "$CG" 2>/dev/null
    ip netns del "$NS" 2>/dev/null
    rm -rf "$WORK"
    exit 0
)
# A command that fails unexpectedly ends the demo (set -e) through here: it says where.
finish() {
    local code=$?
    if [ "$code" -ne 0 ] && [ "$code" -ne 130 ] && [ -z "${FAILED:-}" ]; then
        printf '%sdemo failed (exit %s) in: %s%s\n' "$RED" "$code" "${STEP:-the start}" "$RESET" >&2
        printf 'logs: %s\n' "$LOGS" >&2
    fi
    cleanup
}
trap finish EXIT
trap 'printf "\ninterrupted: cleaning up\n" >&2; exit 130' INT TERM

bash "$ROOT/scripts/require-root.sh" "make demo"
mkdir -p "$LOGS"
cleanup
: >"$LOGS/daemon.log"
: >"$LOGS/servers.log"
mkdir -p "$WORK"

step "Preparing: toolchain, packages and the build (logs: target/demo/setup.log, build.log)"
# RECONCILER_DEMO_BUILT=1: the binaries are built already (the demo's own test).
if [ -z "${RECONCILER_DEMO_BUILT:-}" ]; then
    bash "$ROOT/scripts/setup.sh" demo >"$LOGS/setup.log" 2>&1 || fail "make setup: see $LOGS/setup.log"
    # The two binaries the demo runs, no more (a first build takes minutes on 2 cores).
    (cd "$ROOT" && cargo build -p reconciler --bin reconciler -p reconciler-tests --bin probe) \
        >"$LOGS/build.log" 2>&1 || fail "the build: see $LOGS/build.log"
fi
echo "  ready"

# --- the world: a namespace with backends, a repository of signed commits -----------------
ip netns add "$NS"
ip -n "$NS" link set lo up
in_ns() { ip netns exec "$NS" "$@"; }
serve() { # ADDR PORT NAME: a backend that answers each connection with its name
    local family=32 addr=$1
    [[ $1 == *:* ]] && family=128 addr="[$1]"
    ip -n "$NS" addr add "$1/$family" dev lo nodad 2>/dev/null || true
    # A simple command, so that $! is the server itself (ip execs it), never a subshell.
    ip netns exec "$NS" "$BIN/probe" serve "$addr:$2" "$3" >>"$LOGS/servers.log" 2>&1 &
    started $! && SERVERS+=("$1 $2 $!")
}
reap() { # PID: ends a process this demo started, and forgets it
    local pid kept=()
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    for pid in "${PIDS[@]}"; do [ "$pid" = "$1" ] || kept+=("$pid"); done
    PIDS=("${kept[@]}")
    grep -v "^$1 " "$PIDFILE" >"$PIDFILE.new" || true
    mv "$PIDFILE.new" "$PIDFILE"
}
stop_server() { # ADDR PORT
    local entry addr port pid
    for entry in "${SERVERS[@]}"; do
        read -r addr port pid <<<"$entry"
        if [ "$addr" = "$1" ] && [ "$port" = "$2" ]; then reap "$pid"; fi
    done
}
for i in 11 12 13 14; do serve "10.1.0.$i" 8080 "web-$i"; done
for i in 21 22 23; do serve "fd00:1::$i" 8443 "payments-$i"; done
for i in 10 11 12; do serve "10.3.0.$i" 5432 "postgres-$i"; done
for i in 11 12 13; do serve "10.2.1.$i" 9090 "metrics-$i"; done
for i in 53 54; do # DNS servers (dnsmasq) behind the IPv4 and IPv6 DNS VIPs
    ip -n "$NS" addr add "10.2.0.$i/32" dev lo 2>/dev/null || true
    ip -n "$NS" addr add "fd00:2::$i/128" dev lo nodad 2>/dev/null || true
    ip netns exec "$NS" dnsmasq --keep-in-foreground --conf-file=/dev/null --no-hosts --no-resolv \
        --bind-interfaces --listen-address="10.2.0.$i,fd00:2::$i" --port=53 --pid-file= \
        --user=root --address=/web.demo.test/10.96.0.10 --log-facility=/dev/null \
        >>"$LOGS/servers.log" 2>&1 &
    started $!
done
mkdir -p "$CG" "$WORK/repo/services" "$WORK/cache"

ssh-keygen -q -t ed25519 -N '' -C demo -f "$WORK/key"
echo "demo@example.com $(cat "$WORK/key.pub")" >"$WORK/allowed_signers"
git_() { git -C "$WORK/repo" -c user.name=demo -c user.email=demo@example.com \
    -c gpg.format=ssh -c user.signingkey="$WORK/key" "$@"; }
commit() { # MESSAGE [--unsigned]: commits everything, signed unless asked not to
    git_ add -A
    if [ "${2:-}" = --unsigned ]; then git_ commit -q -m "$1"; else git_ commit -q -S -m "$1"; fi
    git_ rev-parse --short=12 HEAD
}
cp -r "$ROOT/examples/policies/." "$WORK/repo/services/"
git_ init -q -b main
FIRST=$(commit "The example services")

# In the demo cgroup and namespace: a process joins the cgroup first (`ip netns exec`
# remounts /sys, hiding the cgroup tree). `client_bg` starts one in the background: $! is the
# client itself (sh and ip exec it).
client() { sh -c 'echo $$ > "$1/cgroup.procs"; shift; exec ip netns exec "$@"' sh "$CG" "$NS" "$@"; }
client_bg() { # OUTPUT COMMAND...
    local output=$1
    shift
    sh -c 'echo $$ > "$1/cgroup.procs"; shift; exec ip netns exec "$@"' sh "$CG" "$NS" "$@" >"$output" &
    started $!
}
connects() { # VIP:PORT COUNT: how the connects went, a line per backend
    client "$BIN/probe" tcp "$1" "$2" | sed 's/^reply \(.*\) \([0-9]*\)$/\2 to \1/; s/^error /failed: /' | indent
}
failed_connects() { client "$BIN/probe" tcp "$1" "$2" | awk '/^error/ { n += $3 } END { print n + 0 }'; }

# The daemon's /status, one field (a Python expression over `s`). Failing is an answer
# (`|| return`: not an error of the demo's): waits poll it while the daemon is busy.
status() {
    in_ns "$BIN/reconciler" status --daemon "$LISTEN" -o json 2>/dev/null |
        python3 -c "import json, sys; s = json.load(sys.stdin); print($1)" 2>/dev/null || return 1
}
wait_until() { # WHAT SECONDS COMMAND...: polls COMMAND until it succeeds
    local what=$1 limit=$2 deadline=$((SECONDS + $2))
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || fail "$what (not within ${limit} s)"
        sleep 0.1
    done
}
is() { [ "$(status "$1")" = "$2" ]; }

# --- the demo ------------------------------------------------------------------------------
step "1. A repository of service definitions, and the plan of its first commit"
typed "git log --oneline --stat"
git_ log --oneline --stat | indent
typed "reconciler plan --repo $WORK/repo --path services --cache-dir $WORK/cache --pin-path $PIN"
"$BIN/reconciler" plan --repo "$WORK/repo" --path services --cache-dir "$WORK/cache" \
    --pin-path "$PIN" | grep -E '^  # |^Plan:|^No data plane' | indent
shown "the plan of a first commit"

step "2. The daemon: applies it, then keeps the node in step (signed commits only)"
cat >"$WORK/node.yaml" <<EOF
source: {url: $WORK/repo, path: services, interval: 2s, cacheDir: $WORK/cache,
         verify: {allowedSigners: $WORK/allowed_signers}}
dataplane: {cgroup: $CG, pinPath: $PIN}
policy: {allowLocalHealthChecks: [10.0.0.0/8, "fd00::/8"]}
listen: $LISTEN
EOF
typed "cat node.yaml"
indent <"$WORK/node.yaml"
typed "reconciler daemon --config node.yaml &"
nsenter --net="/run/netns/$NS" "$BIN/reconciler" daemon --config "$WORK/node.yaml" \
    >>"$LOGS/daemon.log" 2>&1 &
started $!
wait_until "the daemon to apply the first commit" 20 is "(s['applied_revision'] or '')[:12]" "$FIRST"
typed "reconciler status --daemon $LISTEN"
in_ns "$BIN/reconciler" status --daemon "$LISTEN" | grep -E '^(Daemon|Applied revision|Entries):' | indent
shown "the daemon applies a signed commit"

step "3. Clients in the cgroup reach backends through VIPs: TCP and UDP, IPv4 and IPv6"
echo "  (probe: the tests' client, target/debug/probe; every command here runs in the demo cgroup)"
typed "probe tcp 10.96.0.10:80 60     # web: weights 1, 1, 2"
connects 10.96.0.10:80 60
typed "probe tcp [fd00:96::20]:443 60  # payments over IPv6: one backend draining"
connects "[fd00:96::20]:443" 60
for vip in 10.96.0.10:80 "[fd00:96::20]:443"; do
    [ "$(failed_connects "$vip" 20)" = 0 ] || fail "connects to $vip failed"
done
for resolver in 10.96.0.53 fd00:96::53; do
    typed "dig @$resolver web.demo.test A +short   # DNS over UDP"
    answer=$(client dig "@$resolver" web.demo.test A +short +tries=1 +time=2)
    echo "$answer" | indent
    [ "$answer" = 10.96.0.10 ] || fail "no answer through the DNS VIP $resolver"
done
shown "TCP and UDP VIPs, IPv4 and IPv6"

step "4. reconciler trace: each translation as it happens"
typed "reconciler trace --pin-path $PIN --service web"
"$BIN/reconciler" trace --pin-path "$PIN" --service web >"$WORK/trace.txt" 2>&1 &
TRACE=$!
started $TRACE
wait_until "the trace to start" 10 grep -q Tracing "$WORK/trace.txt"
client "$BIN/probe" tcp 10.96.0.10:80 3 >/dev/null
traced() { [ "$(grep -c ' connect$' "$WORK/trace.txt")" -ge 3 ]; }
wait_until "three traced connects" 10 traced
reap "$TRACE"
grep ' connect$' "$WORK/trace.txt" | head -n 3 | cut -c1-120 | indent
shown "reconciler trace"

step "5. Counters: what each service and backend took"
typed "reconciler status --pin-path $PIN --counters"
"$BIN/reconciler" status --pin-path "$PIN" --counters | grep -A5 -E '^ *web/http|^ *web ' | head -n 6 | indent
shown "status --counters"

step "6. A commit for the demo's pace: health checks each second, a quick outlier detection and rollout"
python3 - "$WORK/repo/services" <<'EOF'
import sys, pathlib
root = pathlib.Path(sys.argv[1])
web = root / "team-web/web.yaml"
def replaced(path, old, new):
    text = path.read_text()
    assert old in text, f"{path}: no {old!r}"
    path.write_text(text.replace(old, new, 1))
replaced(web, "outlierDetection: {consecutiveFailures: 5, intervalSeconds: 10, baseEjectionSeconds: 30, maxEjectionPercent: 50}",
         "healthCheck: {intervalSeconds: 1, timeoutMillis: 300, unhealthyThreshold: 2}")
replaced(web, "rollout: {steps: [10, 25, 50, 100], stepSeconds: 60, maxFailurePercent: 5}",
         "rollout: {steps: [50], stepSeconds: 3, maxFailurePercent: 5}")
replaced(root / "team-platform/observability/metrics.yaml", "    - {address: 10.2.1.13}\n",
         "    - {address: 10.2.1.13}\n  outlierDetection: {consecutiveFailures: 3, intervalSeconds: 1, baseEjectionSeconds: 30}\n")
EOF
SECOND=$(commit "Demo pace: check web each second, eject metrics backends fast, roll out in 3 s")
typed "git diff HEAD~1 --stat; reconciler reconcile --daemon $LISTEN --wait"
git_ diff HEAD~1 --stat | indent
in_ns "$BIN/reconciler" reconcile --daemon "$LISTEN" --wait | indent
wait_until "the daemon to apply it" 15 is "(s['applied_revision'] or '')[:12]" "$SECOND"
shown "a commit applied at once on request (a webhook's job)"

step "7. A backend dies: the daemon takes it out, and no connect fails; it comes back"
typed "kill web-12   # the listener at 10.1.0.12:8080"
GENERATION=$(status "s['generation']")
stop_server 10.1.0.12 8080
wait_until "web-12 to be taken out" 15 is \
    "[h['up'] for h in s['health'] if h['backend'] == '10.1.0.12:8080'] == [False] and s['generation'] > $GENERATION" True
echo "  the daemon: 10.1.0.12:8080 $(status "[h['last_error'] for h in s['health'] if h['backend'] == '10.1.0.12:8080'][0]")"
typed "probe tcp 10.96.0.10:80 100"
connects 10.96.0.10:80 100
[ "$(failed_connects 10.96.0.10:80 100)" = 0 ] || fail "connects failed after web-12 was taken out"
typed "# web-12 starts again"
serve 10.1.0.12 8080 web-12
wait_until "web-12 to come back" 15 is \
    "[r['percent'] for r in s['slow_start'] if r['backend'] == '10.1.0.12:8080'] != []" True
echo "  the daemon: 10.1.0.12:8080 passes again, back in with $(status \
    "[r['percent'] for r in s['slow_start'] if r['backend'] == '10.1.0.12:8080'][0]")% of its share, \
all of it within a minute (slowStart)"
shown "a dead backend taken out (0 failed connects) and back (slow start)"

step "8. A backend that resets connections: outlier detection ejects it"
typed "kill metrics-12   # connects to 10.2.1.12:9090 are refused from now on"
GENERATION=$(status "s['generation']")
stop_server 10.2.1.12 9090
client_bg "$WORK/clients.txt" "$BIN/probe" tcp-until "$WORK/clients.stop" 10.96.1.10:9090
CLIENTS=$!
wait_until "metrics-12 to be ejected" 20 is \
    "any(e['backend'] == '10.2.1.12:9090' and e['ejected'] for e in s['ejections']) and s['generation'] > $GENERATION" True
touch "$WORK/clients.stop"
wait "$CLIENTS" || true
reap "$CLIENTS"
echo "  clients meanwhile: $(awk '/^error/ { e += $3 } /^reply/ { r += $3 } END { print r + 0 " answered, " e + 0 " refused before the ejection" }' "$WORK/clients.txt")"
typed "reconciler status --daemon $LISTEN | grep -A2 Ejections"
in_ns "$BIN/reconciler" status --daemon "$LISTEN" | grep -A2 -i 'ejection' | head -n 3 | indent
[ "$(failed_connects 10.96.1.10:9090 100)" = 0 ] || fail "connects failed after the ejection"
echo "  100 more connects: none failed"
shown "outlier detection ejects a backend that resets"

rollout() { # COMMIT RESULT: clients connect while the rollout runs, until it ends as RESULT
    # (an aborted one: once the revision before is back)
    rm -f "$WORK/rollout.stop"
    client_bg "$WORK/rollout.txt" "$BIN/probe" tcp-until "$WORK/rollout.stop" 10.96.0.10:80
    local pid=$!
    in_ns "$BIN/reconciler" reconcile --daemon "$LISTEN" >/dev/null
    wait_until "the rollout of $1 to end $2" 30 is \
        "(s['last_rollout'] or {}).get('result') == '$2' and (s['last_rollout'] or {}).get('revision', '')[:12] == '$1' and ('$2' != 'aborted' or (s['applied_revision'] or '')[:12] != '$1')" True
    touch "$WORK/rollout.stop"
    wait "$pid" || true
    reap "$pid"
}
step "9. A canary rollout that aborts: the new backend refuses connects"
edit() { # FILE FROM TO: replaces a whole line, which must be there
    grep -qxF -- "$2" "$1" || fail "no line '$2' in $1"
    python3 -c 'import sys; p, a, b = sys.argv[1:]; t = open(p).read(); open(p, "w").write(t.replace(a + "\n", b + "\n", 1))' "$1" "$2" "$3"
}
WEB="$WORK/repo/services/team-web/web.yaml"
# 10.1.0.15 is an address of the namespace where nothing listens: its connects are refused.
ip -n "$NS" addr add 10.1.0.15/32 dev lo
edit "$WEB" "    - {address: 10.1.0.13, weight: 2}" "    - {address: 10.1.0.15, weight: 2}"
BAD=$(commit "web: replace 10.1.0.13 with 10.1.0.15 (nothing listens there)")
typed "git commit -S -m 'web: replace 10.1.0.13 with 10.1.0.15'; reconciler reconcile --daemon $LISTEN"
rollout "$BAD" aborted
echo "  rollout $(status "s['last_rollout']['result'] + ': ' + (s['last_rollout']['reason'] or '')")"
echo "  the data plane is back at $(status "s['applied_revision'][:12]"); $BAD is not tried again"
shown "a canary rollout aborts on a bad backend"

step "10. A canary rollout that completes"
edit "$WEB" "    - {address: 10.1.0.15, weight: 2}" "    - {address: 10.1.0.14, weight: 2}"
GOOD=$(commit "web: replace 10.1.0.13 with 10.1.0.14")
typed "git commit -S -m 'web: replace 10.1.0.13 with 10.1.0.14'; reconciler reconcile --daemon $LISTEN"
rollout "$GOOD" completed
echo "  rollout: completed; clients meanwhile: $(awk '/^error/ { e += $3 } /^reply/ { r += $3 } END { print r + 0 " answered, " e + 0 " failed" }' "$WORK/rollout.txt")"
[ "$(awk '/^error/ { e += $3 } END { print e + 0 }' "$WORK/rollout.txt")" = 0 ] || fail "connects failed during the rollout"
connects 10.96.0.10:80 60
shown "a canary rollout completes"

step "11. An unsigned commit is refused; the data plane stays"
edit "$WORK/repo/services/team-data/postgres.yaml" "    - {address: 10.3.0.12, state: draining}" "    - {address: 10.3.0.12}"
UNSIGNED=$(commit "postgres: undrain 10.3.0.12 (unsigned)" --unsigned)
typed "git commit -m 'postgres: undrain 10.3.0.12'   # not signed"
typed "reconciler reconcile --daemon $LISTEN --wait"
if in_ns "$BIN/reconciler" reconcile --daemon "$LISTEN" --wait >"$WORK/unsigned.txt" 2>&1; then
    fail "the unsigned commit $UNSIGNED was applied"
fi
head -n 3 "$WORK/unsigned.txt" | cut -c1-140 | indent
is "(s['applied_revision'] or '')[:12]" "$GOOD" || fail "the data plane moved"
shown "an unsigned commit refused"

step "Done"
for feature in "${DONE[@]}"; do printf '  %sOK%s  %s\n' "$GREEN" "$RESET" "$feature"; done
echo "  (removing the namespace, the cgroup, the pinned data plane and the listeners)"
