//! `swarm version`.
use serde_json::json;

use super::output::Format;
use crate::{api::client::Client, host::Host, version};

pub async fn run(host: &Host, format: Format) -> anyhow::Result<()> {
    let client_info = json!({
        "Version": version::VERSION,
        "ApiVersion": version::API_VERSION,
        "GitCommit": version::GIT_COMMIT,
        "Os": version::OS,
        "Arch": version::arch(),
    });
    let server = async {
        let c = Client::connect(host).await?;
        c.system()
            .version(swarm_proto::v1::VersionRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| c.rpc_error(s))
    }
    .await;

    match format {
        Format::Json => {
            let server_json = server.as_ref().ok().map(|v| {
                json!({
                    "Version": v.version,
                    "ApiVersion": v.api_version,
                    "GitCommit": v.git_commit,
                    "Os": v.os,
                    "Arch": v.arch,
                    "KernelVersion": v.kernel_version,
                    "UptimeSeconds": v.uptime_seconds,
                })
            });
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &json!({"Client": client_info, "Server": server_json})
                )?
            );
        }
        Format::Table => {
            println!("Client:");
            println!(" Version:      {}", version::VERSION);
            println!(" API version:  {}", version::API_VERSION);
            println!(" Git commit:   {}", version::GIT_COMMIT);
            println!(" OS/Arch:      {}/{}", version::OS, version::arch());
            if let Ok(v) = &server {
                println!();
                println!("Server:");
                println!(" Version:      {}", v.version);
                println!(" API version:  {}", v.api_version);
                println!(" Git commit:   {}", v.git_commit);
                println!(" OS/Arch:      {}/{}", v.os, v.arch);
                println!(" Kernel:       {}", v.kernel_version);
                println!(" Uptime:       {}s", v.uptime_seconds);
            }
        }
    }
    server.map(|_| ()).map_err(Into::into)
}
