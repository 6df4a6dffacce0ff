//! Compiles the .proto files under `swarm/` for tonic and prost.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["swarm/v1/system.proto", "swarm/v1/raft.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&protos, &["."])?;
    Ok(())
}
