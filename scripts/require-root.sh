#!/usr/bin/env bash
# Fails with a clear message unless run as root: the data plane needs BPF, cgroups and
# network namespaces.
if [ "$(id -u)" -ne 0 ]; then
    echo "$1 loads BPF programs and creates cgroups and network namespaces: it needs root." >&2
    echo "Run: sudo $1" >&2
    exit 1
fi
