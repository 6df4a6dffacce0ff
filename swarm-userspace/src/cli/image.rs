//! `swarm image ls|pull|rm|load|prune`: clients of the node-local Images
//! API, shaped like docker's image commands.
use std::{
    collections::BTreeSet,
    io::{BufRead, IsTerminal, Read, Write},
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use clap::{Args, Subcommand};
use swarm_proto::v1 as pb;
use tokio_stream::StreamExt;

use super::output::{Format, table};
use crate::{api::client::Client, image::split_familiar};

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// List the images on this node.
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Pull an image from a registry onto this node.
    Pull(PullArgs),
    /// Remove one or more images (their layers go at the next prune).
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
    /// Load images from an OCI layout tar or a `docker save` tar.
    Load(LoadArgs),
    /// Remove unused images, layers and blobs.
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Output format: "table" (default) or "json" (an array of rows).
    #[arg(long, default_value = "table")]
    pub format: Format,
    /// Only print image IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Print full image IDs.
    #[arg(long)]
    pub no_trunc: bool,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// NAME[:TAG] or NAME@sha256:DIGEST.
    pub reference: String,
    /// Print only the image name when done.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Remove an image with several names by ID, or one a container uses.
    #[arg(short, long)]
    pub force: bool,
    /// Names, IDs or ID prefixes.
    #[arg(value_name = "IMAGE", required = true)]
    pub images: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Read from this tar archive instead of stdin.
    #[arg(short, long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Accepted for docker compatibility: the output already is only the
    /// loaded names and IDs.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Remove every image no container uses, not only untagged ones.
    #[arg(short, long)]
    pub all: bool,
    /// Do not ask for confirmation.
    #[arg(short, long)]
    pub force: bool,
}

/// `--insecure-registry` values: `host[:port]`, as in image references.
pub fn parse_registry(s: &str) -> Result<String, String> {
    if s.contains("://") {
        return Err(format!(
            "{s:?}: give the registry as HOST[:PORT], without a scheme"
        ));
    }
    if s.is_empty() || s.contains(['/', '@', ' ']) {
        return Err(format!(
            "{s:?} is not a registry address: give HOST[:PORT], e.g. 198.51.100.1:5000"
        ));
    }
    Ok(s.to_owned())
}

pub async fn run(client: &Client, cmd: ImageCommand) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Ls(a) => ls(client, &a).await,
        ImageCommand::Pull(a) => pull(client, &a).await,
        ImageCommand::Rm(a) => rm(client, &a).await,
        ImageCommand::Load(a) => load(client, &a).await,
        ImageCommand::Prune(a) => prune(client, &a).await,
    }
}

fn short_id(id: &str, no_trunc: bool) -> String {
    if no_trunc {
        return id.to_owned();
    }
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    hex.chars().take(12).collect()
}

async fn ls(client: &Client, args: &LsArgs) -> anyhow::Result<()> {
    let mut images = client
        .images()
        .list(pb::ListImagesRequest {})
        .await
        .map_err(|s| client.rpc_error(s))?
        .into_inner()
        .images;
    // Newest first, as docker lists them.
    images.sort_by(|a, b| b.created_unix.cmp(&a.created_unix).then(a.id.cmp(&b.id)));
    if args.quiet {
        let mut seen = BTreeSet::new();
        for i in &images {
            if seen.insert(&i.id) {
                println!("{}", short_id(&i.id, args.no_trunc));
            }
        }
        return Ok(());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let mut rows: Vec<[String; 6]> = Vec::new();
    for i in &images {
        let names: Vec<(String, String)> = if !i.repo_tags.is_empty() {
            i.repo_tags.iter().map(|t| split_familiar(t)).collect()
        } else if !i.repo_digests.is_empty() {
            // Pulled by digest: the repository, without a tag.
            i.repo_digests.iter().map(|d| split_familiar(d)).collect()
        } else {
            vec![("<none>".into(), "<none>".into())]
        };
        for (repo, tag) in names {
            let digest = i
                .repo_digests
                .iter()
                .find(|d| d.split('@').next() == Some(repo.as_str()))
                .and_then(|d| d.split('@').nth(1))
                .unwrap_or("<none>")
                .to_owned();
            rows.push([
                repo,
                tag,
                short_id(&i.id, args.no_trunc),
                created_since(i.created_unix, now),
                human_size(i.size),
                digest,
            ]);
        }
    }
    match args.format {
        Format::Json => {
            let v: Vec<serde_json::Value> = rows
                .iter()
                .zip(
                    images
                        .iter()
                        .flat_map(|i| std::iter::repeat_n(i, i.repo_tags.len().max(1))),
                )
                .map(|(r, i)| {
                    serde_json::json!({
                        "ID": r[2],
                        "Repository": r[0],
                        "Tag": r[1],
                        "Digest": r[5],
                        "CreatedAt": created_at(i.created_unix),
                        "CreatedSince": r[3],
                        "Size": r[4],
                        "Containers": i.used_by.len().to_string(),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = rows.into_iter().map(|r| r[..5].to_vec()).collect();
            print!(
                "{}",
                table(&["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], &rows)
            );
        }
    }
    Ok(())
}

async fn pull(client: &Client, args: &PullArgs) -> anyhow::Result<()> {
    let mut stream = client
        .images()
        .pull(pb::PullImageRequest {
            reference: args.reference.clone(),
        })
        .await
        .map_err(|s| client.rpc_error(s))?
        .into_inner();
    let mut out = std::io::stdout().lock();
    while let Some(ev) = stream.next().await {
        let ev = ev.map_err(|s| client.rpc_error(s))?;
        let Some(ev) = ev.event else { continue };
        match ev {
            pb::pull_image_event::Event::Resolved(r) if !args.quiet => {
                let (repo, tag) = split_familiar(&crate::image::familiar_name(&r.reference));
                let tag = if tag == "<none>" {
                    "latest".to_owned()
                } else {
                    tag
                };
                let _ = writeln!(out, "{tag}: Pulling from {repo}");
            }
            pb::pull_image_event::Event::Layer(l) if !args.quiet => {
                let what = match pb::LayerPullState::try_from(l.state) {
                    Ok(pb::LayerPullState::Exists) => "Already exists",
                    Ok(pb::LayerPullState::Complete) => "Pull complete",
                    _ => continue,
                };
                let _ = writeln!(out, "{}: {what}", short_id(&l.digest, false));
            }
            pb::pull_image_event::Event::Done(d) => {
                if !args.quiet {
                    let _ = writeln!(out, "Digest: {}", d.digest);
                    if d.up_to_date {
                        let _ = writeln!(out, "Status: Image is up to date for {}", d.reference);
                    } else {
                        let _ = writeln!(out, "Status: Downloaded newer image for {}", d.reference);
                    }
                }
                let _ = writeln!(out, "{}", d.reference);
                return Ok(());
            }
            _ => {}
        }
    }
    anyhow::bail!(
        "the daemon at {} ended the pull of {} without saying how it went: check its log",
        client.host(),
        args.reference
    )
}

async fn rm(client: &Client, args: &RmArgs) -> anyhow::Result<()> {
    let resp = client
        .images()
        .remove(pb::RemoveImagesRequest {
            references: args.images.clone(),
            force: args.force,
        })
        .await
        .map_err(|s| client.rpc_error(s))?
        .into_inner();
    for r in &resp.removals {
        match &r.what {
            Some(pb::image_removal::What::Untagged(t)) => println!("Untagged: {t}"),
            Some(pb::image_removal::What::Deleted(d)) => println!("Deleted: {d}"),
            None => {}
        }
    }
    for e in &resp.errors {
        eprintln!("Error: {e}");
    }
    if !resp.errors.is_empty() {
        anyhow::bail!(
            "{} of {} images could not be removed",
            resp.errors.len(),
            args.images.len()
        );
    }
    Ok(())
}

const CHUNK: usize = 1 << 20;

async fn load(client: &Client, args: &LoadArgs) -> anyhow::Result<()> {
    let mut input: Box<dyn Read + Send> = match &args.input {
        Some(p) if p.as_os_str() != "-" => Box::new(
            std::fs::File::open(p)
                .with_context(|| format!("cannot open {} for `image load`", p.display()))?,
        ),
        _ => {
            if std::io::stdin().is_terminal() {
                anyhow::bail!(
                    "`swarm image load` reads an archive from stdin, which is a terminal: pass -i FILE or redirect a file into it"
                );
            }
            Box::new(std::io::stdin())
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::LoadImageChunk>(4);
    let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = input.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            buf.truncate(n);
            if tx.blocking_send(pb::LoadImageChunk { data: buf }).is_err() {
                // The call failed; its error is reported below.
                return Ok(());
            }
        }
    });
    let resp = client
        .images()
        .load(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    reader
        .await
        .context("reading the archive")?
        .context("reading the archive")?;
    let resp = resp.map_err(|s| client.rpc_error(s))?.into_inner();
    for img in &resp.images {
        if img.repo_tags.is_empty() {
            println!("Loaded image ID: {}", img.id);
        }
        for t in &img.repo_tags {
            println!("Loaded image: {t}");
        }
    }
    Ok(())
}

async fn prune(client: &Client, args: &PruneArgs) -> anyhow::Result<()> {
    if !args.force {
        let warning = if args.all {
            "WARNING! This will remove all images without at least one container associated to them."
        } else {
            "WARNING! This will remove all dangling images."
        };
        print!("{warning}\nAre you sure you want to continue? [y/N] ");
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return Ok(());
        }
    }
    let resp = client
        .images()
        .prune(pb::PruneImagesRequest { all: args.all })
        .await
        .map_err(|s| client.rpc_error(s))?
        .into_inner();
    if !resp.deleted_images.is_empty() || !resp.deleted_layers.is_empty() {
        println!("Deleted Images:");
        for d in &resp.deleted_images {
            println!("deleted: {d}");
        }
        for d in &resp.deleted_layers {
            println!("deleted: {d}");
        }
        println!();
    }
    println!(
        "Total reclaimed space: {}",
        human_size(resp.reclaimed_bytes)
    );
    Ok(())
}

/// Decimal sizes with three significant digits, as `docker image ls`
/// prints them ("4.26MB", "123kB").
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    #[allow(clippy::cast_precision_loss)] // three digits are printed
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 999.5 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    let decimals = if v >= 99.95 {
        0
    } else if v >= 9.995 {
        1
    } else {
        2
    };
    let mut n = format!("{v:.decimals$}");
    if n.contains('.') {
        n = n.trim_end_matches('0').trim_end_matches('.').to_owned();
    }
    format!("{n}{}", UNITS[unit])
}

/// "2 hours ago", in docker's words (go-units HumanDuration).
pub fn created_since(created: i64, now: i64) -> String {
    if created <= 0 {
        return "N/A".into();
    }
    let secs = now.saturating_sub(created).max(0);
    let (mins, hours) = (secs / 60, secs / 3600);
    let ago = if secs < 1 {
        "Less than a second".to_owned()
    } else if secs == 1 {
        "1 second".to_owned()
    } else if secs < 60 {
        format!("{secs} seconds")
    } else if mins == 1 {
        "About a minute".to_owned()
    } else if mins < 60 {
        format!("{mins} minutes")
    } else if hours == 1 {
        "About an hour".to_owned()
    } else if hours < 48 {
        format!("{hours} hours")
    } else if hours < 24 * 7 * 2 {
        format!("{} days", hours / 24)
    } else if hours < 24 * 30 * 2 {
        format!("{} weeks", hours / 24 / 7)
    } else if hours < 24 * 365 * 2 {
        format!("{} months", hours / 24 / 30)
    } else {
        format!("{} years", hours / 24 / 365)
    };
    format!("{ago} ago")
}

fn created_at(created: i64) -> String {
    if created <= 0 {
        return String::new();
    }
    match time::OffsetDateTime::from_unix_timestamp(created) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} +0000 UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_like_docker_images() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(4_261_000), "4.26MB");
        assert_eq!(human_size(12_340_000), "12.3MB");
        assert_eq!(human_size(123_400_000), "123MB");
        assert_eq!(human_size(1_500_000_000), "1.5GB");
    }

    #[test]
    fn ages_print_like_docker() {
        let now = 1_700_000_000;
        assert_eq!(created_since(0, now), "N/A");
        assert_eq!(created_since(now - 5, now), "5 seconds ago");
        assert_eq!(created_since(now - 90, now), "About a minute ago");
        assert_eq!(created_since(now - 3 * 3600, now), "3 hours ago");
        assert_eq!(created_since(now - 3 * 86400, now), "3 days ago");
        assert_eq!(created_since(now - 21 * 86400, now), "3 weeks ago");
    }

    #[test]
    fn insecure_registries_are_host_port() {
        assert_eq!(
            parse_registry("198.51.100.1:5000").as_deref(),
            Ok("198.51.100.1:5000")
        );
        assert!(parse_registry("http://x:5000").is_err());
        assert!(parse_registry("10.0.0.0/8").is_err());
        assert!(parse_registry("").is_err());
    }
}
