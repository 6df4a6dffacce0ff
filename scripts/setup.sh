#!/usr/bin/env bash
# Installs everything the demo and the tests need on a fresh Debian 12 machine
# that has only the Rust toolchain. Idempotent: each step checks first, so a
# second run takes about a second.
set -euo pipefail

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: swarm runs nodes in network namespaces and loads eBPF; run as root" >&2
  exit 1
fi

# Debian packages: build deps (libprotobuf-dev carries the well-known
# google/protobuf/*.proto types protoc imports), kernel tooling, the local
# registry and image tools, the font benchmark charts are labelled with, wrk
# (HTTP load for the mesh benchmark).
APT_PKGS=(
  build-essential pkg-config protobuf-compiler libprotobuf-dev libseccomp-dev
  iproute2 ethtool bpftool tcpdump iputils-ping nftables
  docker-registry skopeo umoci busybox-static tini
  prometheus curl jq wrk
  fonts-dejavu-core
)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # --no-install-recommends keeps prometheus/registry from pulling in extras;
  # their services are never started by us (tests run them on loopback).
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian's postinst may start these services on all interfaces; we only run
  # them ourselves, bound to 127.0.0.1.
  for svc in docker-registry prometheus prometheus-node-exporter; do
    if command -v systemctl >/dev/null 2>&1; then systemctl disable --now "$svc" >/dev/null 2>&1 || true; fi
    if [ -x "/etc/init.d/$svc" ]; then "/etc/init.d/$svc" stop >/dev/null 2>&1 || true; fi
  done
fi

# The eBPF crate builds with nightly's -Z build-std, which needs rust-src.
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  log "adding rust-src to the nightly toolchain"
  rustup component add rust-src --toolchain nightly >/dev/null
fi

# bpf-linker: the newest wants LLVM 23; 0.10.4 uses the nightly's own LLVM 22.
BPF_LINKER_VERSION=0.10.4
if ! bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
  log "installing bpf-linker $BPF_LINKER_VERSION (a few minutes, once)"
  cargo install bpf-linker --version "$BPF_LINKER_VERSION" --locked --quiet
fi

command -v cargo-nextest >/dev/null 2>&1 || {
  log "installing cargo-nextest"
  cargo install cargo-nextest --locked --quiet
}
