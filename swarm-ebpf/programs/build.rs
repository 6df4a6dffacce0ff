//! Rebuild the programs when bpf-linker changes (a new LLVM can change the
//! object even when the source does not).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
