#!/usr/bin/env bash
# The demo: a swarm of daemons in network namespaces on this machine, with
# the eBPF data plane attached, traffic flowing, and the CLI pointed at it.
# Runs until Ctrl-C, then removes everything it created.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --locked --bins
cargo xtask images
exec cargo xtask demo "$@"
