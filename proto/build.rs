//! Compiles the .proto files under `swarm/` for tonic and prost.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "swarm/v1/system.proto",
        "swarm/v1/objects.proto",
        "swarm/v1/raft.proto",
        "swarm/v1/control.proto",
        "swarm/v1/ca.proto",
        "swarm/v1/dispatcher.proto",
        "swarm/v1/swarm.proto",
        "swarm/v1/image.proto",
        "swarm/v1/logbroker.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        // BTreeMap, not HashMap: maps then encode in key order, so every
        // manager produces the same bytes for the same store snapshot.
        .btree_map(".")
        // Boxed: a store action is otherwise as large as its largest kind
        // (2.6 kB), and batches of thousands of them were copied and paged
        // in that size on every manager.
        .boxed(".swarm.v1.StoreAction.target.cluster")
        .boxed(".swarm.v1.StoreAction.target.node")
        .boxed(".swarm.v1.StoreAction.target.service")
        .boxed(".swarm.v1.StoreAction.target.task")
        .boxed(".swarm.v1.StoreAction.target.network")
        .boxed(".swarm.v1.StoreAction.target.secret")
        .boxed(".swarm.v1.StoreAction.target.config")
        .boxed(".swarm.v1.StoreAction.target.task_status")
        .build_server(true)
        .build_client(true)
        .compile_protos(&protos, &["."])?;
    Ok(())
}
