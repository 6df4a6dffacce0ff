#!/usr/bin/env bash
# The whole test run: setup, lints, build, test images, every test.
# CI runs exactly this (.ci/run). Needs root: tests create network
# namespaces and load eBPF programs.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
started=$(date +%s)

step "setup"
scripts/setup.sh

step "format"
cargo fmt --all --check

step "clippy (host crates)"
cargo clippy --all-targets --locked -- -D warnings

step "clippy (eBPF crate, bpfel-unknown-none)"
cargo +nightly clippy --locked -p swarm-ebpf --target bpfel-unknown-none \
  -Z build-std=core --release -- -D warnings

step "build"
cargo build --locked --bins

step "test images"
cargo xtask images

step "tests"
cargo nextest run --locked --no-fail-fast

echo "all checks passed in $(( $(date +%s) - started ))s" >&2
