# reconciler: a newcomer needs two commands, `make demo` and `make test`; everything they
# need (apt packages, nightly rust-src, bpf-linker, bpffs) is installed by `make setup`.
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo

.PHONY: setup build test lint demo bench fuzz man deb clean

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --all-targets

# Every test, including the ones that load the programs into the kernel (they need root).
test: setup
	@bash scripts/require-root.sh "make test"
	# The end-to-end tests run the real `reconciler` and `probe` binaries.
	$(CARGO) build --bins
	$(CARGO) test --all-targets --no-fail-fast
	$(CARGO) test --doc

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	# The validate-only build (no data plane): what CI users install.
	$(CARGO) clippy -p reconciler --no-default-features -- -D warnings
	# The BPF crate builds only for the BPF target, with nightly and build-std.
	cd reconciler-ebpf && $(CARGO) +nightly clippy --target bpfel-unknown-none \
		-Z build-std=core --bins -- -D warnings

# target/deb/reconciler_<version>_<arch>.deb: the release build, its unit, an example
# configuration, man pages and completions (scripts/deb.sh, with dpkg-deb).
deb: setup
	$(CARGO) build --release --bins
	@bash scripts/deb.sh

# Runs setup and the build itself, quietly (their logs: target/demo/).
demo:
	@bash scripts/demo.sh

# Data plane and control plane against kube-proxy's iptables and nftables layouts, in
# namespaces of their own. `make bench QUICK=1` takes about three minutes; the full run ~15.
bench: setup
	@bash scripts/require-root.sh "make bench"
	$(CARGO) build --release --bins
	target/release/reconciler-bench $(if $(QUICK),--quick) --json target/bench/results.json

# Fuzzes the definition loader, the daemon configuration and saved plans with cargo fuzz
# (nightly; installs cargo-fuzz if missing) for FUZZ_SECONDS per target (default 60); fails,
# naming the input, if a target finds a crash. Not part of build or test.
fuzz: setup
	@bash scripts/fuzz.sh

# Man pages (reconciler.1 and reconciler-SUBCOMMAND.1) into target/man, from the command
# line's own definition (clap_mangen): `man -l target/man/reconciler-plan.1`.
man: setup
	$(CARGO) build --bins
	target/debug/reconciler manpages --dir target/man

clean:
	$(CARGO) clean
