//! Host-side face of the eBPF crate: empty on purpose.
//!
//! The programs are the `swarm-ebpf` binary (src/main.rs), built for
//! bpfel-unknown-none by aya-build from swarm-userspace's build script. This
//! library exists only so that crate can list us as a build-dependency and be
//! rebuilt when the programs change.
#![no_std]
