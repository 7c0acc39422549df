#!/usr/bin/env bash
# `make demo`: examples/policies/ becomes a git repository; reconciler plans and applies it
# to a demo cgroup; clients in that cgroup, inside a network namespace of their own, reach
# real backend listeners through the VIPs. Then a commit changes one service and the plan
# and apply show only that change. Everything is removed at the end, also on failure, and
# leftovers of an interrupted run are removed at the start.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN="$ROOT/target/debug"
NS=reconciler-demo
PIN=/sys/fs/bpf/reconciler-demo
WORK=/tmp/reconciler-demo
CGROUP_ROOT=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts)
CG="$CGROUP_ROOT/reconciler-demo"
SERVERS=()

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*" | sed "s|$BIN/||; s|$WORK/||g"; "$@"; }

cleanup() {
    for pid in "${SERVERS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${SERVERS[@]}"; do wait "$pid" 2>/dev/null || true; done
    "$BIN/reconciler" uninstall --pin-path "$PIN" >/dev/null 2>&1 || true
    rmdir "$CG" 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
cleanup

say "A git repository of service definitions (from examples/policies/)"
mkdir -p "$WORK/repo/services" "$WORK/cache"
cp -r "$ROOT/examples/policies/." "$WORK/repo/services/"
git_() { git -C "$WORK/repo" -c user.name=demo -c user.email=demo@example.com "$@"; }
git_ init -q -b main
git_ add -A && git_ commit -q -m "Add the example services"
git_ log --oneline --stat | sed 's/^/  /'

say "A network namespace with loopback only, and backend listeners at the backends' addresses"
ip netns add "$NS"
ip -n "$NS" link set lo up
serve() { # ADDR PORT NAME
    local family=32; [[ $1 == *:* ]] && family=128
    ip -n "$NS" addr add "$1/$family" dev lo nodad 2>/dev/null || true
    local addr=$1; [[ $1 == *:* ]] && addr="[$1]"
    ip netns exec "$NS" "$BIN/probe" serve "$addr:$2" "$3" &
    SERVERS+=($!)
}
for i in 11 12 13 14; do serve "10.1.0.$i" 8080 "web-$i"; done
for i in 21 22 23; do serve "fd00:1::$i" 8443 "payments-$i"; done
for i in 10 11 12; do serve "10.3.0.$i" 5432 "postgres-$i"; done
resolver() { # ADDR: a real DNS server (dnsmasq) that answers for demo.test
    ip -n "$NS" addr add "$1/32" dev lo 2>/dev/null || true
    ip netns exec "$NS" dnsmasq --keep-in-foreground --conf-file=/dev/null --no-hosts \
        --no-resolv --bind-interfaces --listen-address="$1" --port=53 --pid-file= --user=root \
        --address=/web.demo.test/10.96.0.10 --log-facility=/dev/null &
    SERVERS+=($!)
}
for i in 53 54; do resolver "10.2.0.$i"; done
echo "  listening: web 10.1.0.11-14:8080, payments [fd00:1::21-23]:8443, postgres 10.3.0.10-12:5432,"
echo "             DNS (dnsmasq) 10.2.0.53-54:53"
mkdir -p "$CG"
echo "  demo cgroup: $CG"

REPO=(--repo "$WORK/repo" --path services --cache-dir "$WORK/cache" --pin-path "$PIN")

say "Validate (what CI runs on every pull request)"
run "$BIN/reconciler" validate "$WORK/repo/services"

say "Plan: nothing is installed yet"
run "$BIN/reconciler" plan "${REPO[@]}"

say "Apply: install the data plane on the demo cgroup and write the maps"
run "$BIN/reconciler" apply "${REPO[@]}" --cgroup "$CG" | tail -n 2

connect() { # ADDR COUNT: a client inside the demo cgroup and the namespace
    # Join the cgroup first: `ip netns exec` remounts /sys, hiding the cgroup tree.
    sh -c 'echo $$ > "$1/cgroup.procs"; exec ip netns exec "$2" "$3" tcp "$4" "$5"' \
        sh "$CG" "$NS" "$BIN/probe" "$1" "$2" | sed 's/^reply /  answered by /; s/^error /  failed: /'
}
say "Clients in the cgroup connect to the VIPs (60 connects each)"
echo "web 10.96.0.10:80 (weights 1, 1, 2):"; connect 10.96.0.10:80 60
echo "payments [fd00:96::20]:443 (one backend draining):"; connect "[fd00:96::20]:443" 60
echo "postgres-read 10.96.2.10:5432 (Maglev, weights 1, 3: one client, one backend):"; connect 10.96.2.10:5432 60

say "A DNS query over UDP to the dns VIP, answered by a resolver behind it, from the VIP"
# dig accepts only an answer from the address it asked: sendmsg (or connect) took the query
# to a resolver, and recvmsg shows the VIP as the answer's source again.
sh -c 'echo $$ > "$1/cgroup.procs"; exec ip netns exec "$2" dig @10.96.0.53 web.demo.test A +tries=1 +time=2' \
    sh "$CG" "$NS" | grep -E 'ANSWER SECTION|IN[[:space:]]+A|SERVER:' | sed 's/^/  /'

say "A commit: web drops 10.1.0.12 and gains 10.1.0.14"
sed -i 's/^    - {address: 10.1.0.12}$/    - {address: 10.1.0.14}/' "$WORK/repo/services/team-web/web.yaml"
git_ commit -q -am "web: replace 10.1.0.12 with 10.1.0.14"
git_ show --stat --oneline HEAD | sed 's/^/  /'
git_ diff HEAD~1 -U0 | sed -n '/^[-+] /p' | sed 's/^/  /'

say "Plan: only that change"
run "$BIN/reconciler" plan "${REPO[@]}"

say "Apply"
run "$BIN/reconciler" apply "${REPO[@]}" | tail -n 2
echo "web 10.96.0.10:80:"; connect 10.96.0.10:80 60

say "Status"
run "$BIN/reconciler" status --pin-path "$PIN"

say "Done: removing the namespace, the cgroup, the pinned data plane and the listeners"
