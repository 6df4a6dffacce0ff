//! `swarm dataplane status`.
use serde_json::json;

use super::output::{Format, table};
use crate::api::client::Client;

pub async fn status(client: &Client, format: Format) -> anyhow::Result<()> {
    let s = client
        .system()
        .dataplane_status(swarm_proto::v1::DataplaneStatusRequest {})
        .await
        .map_err(|e| client.rpc_error(e))?
        .into_inner();
    match format {
        Format::Json => {
            let v = json!({
                "Backend": s.backend,
                "Interfaces": s.interfaces.iter().map(|i| json!({
                    "Name": i.name,
                    "Ifindex": i.ifindex,
                    "Programs": i.programs.iter().map(|p| json!({
                        "Name": p.name, "Kind": p.kind, "AttachMode": p.attach_mode,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "Counters": s.counters.iter().map(|c| json!({
                    "Interface": c.interface,
                    "Direction": c.direction,
                    "Class": c.class,
                    "Packets": c.packets,
                    "Bytes": c.bytes,
                })).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Format::Table => {
            println!("Backend: {}", s.backend);
            if s.interfaces.is_empty() {
                println!(
                    "No interfaces attached (start the daemon with --dataplane-interface IFACE)."
                );
                return Ok(());
            }
            println!();
            let rows: Vec<Vec<String>> = s
                .interfaces
                .iter()
                .flat_map(|i| {
                    i.programs.iter().map(move |p| {
                        vec![
                            i.name.clone(),
                            i.ifindex.to_string(),
                            p.name.clone(),
                            p.attach_mode.clone(),
                        ]
                    })
                })
                .collect();
            print!(
                "{}",
                table(&["INTERFACE", "IFINDEX", "PROGRAM", "MODE"], &rows)
            );
            println!();
            let rows: Vec<Vec<String>> = s
                .counters
                .iter()
                .map(|c| {
                    vec![
                        c.interface.clone(),
                        c.direction.clone(),
                        c.class.clone(),
                        c.packets.to_string(),
                        c.bytes.to_string(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &["INTERFACE", "DIRECTION", "CLASS", "PACKETS", "BYTES"],
                    &rows
                )
            );
        }
    }
    Ok(())
}
