//! How every benchmark reports: a table on stdout with candidate, baseline
//! and their ratio side by side, and the same numbers (plus the raw
//! samples) as JSON in `<out>/<name>.json`. Also what the machine was
//! doing meanwhile (`/proc/loadavg` before and after), because the numbers
//! mean little without it.
//!
//! Owns the output format; never measures anything itself.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::Serialize;

/// `/proc/loadavg`: run-queue averages over 1, 5 and 15 minutes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Load {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
    /// "runnable/total" scheduling entities at the time of reading.
    pub tasks: String,
}

impl Load {
    /// Reads this machine's load; `None` if /proc is not there.
    pub fn now() -> Option<Load> {
        parse_loadavg(&std::fs::read_to_string("/proc/loadavg").ok()?)
    }
}

impl std::fmt::Display for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2} {:.2} {:.2} ({} runnable/total)",
            self.one, self.five, self.fifteen, self.tasks
        )
    }
}

/// Parses the first four fields of `/proc/loadavg`
/// (`0.86 1.24 2.50 1/83 18377`).
pub fn parse_loadavg(s: &str) -> Option<Load> {
    let mut f = s.split_whitespace();
    Some(Load {
        one: f.next()?.parse().ok()?,
        five: f.next()?.parse().ok()?,
        fifteen: f.next()?.parse().ok()?,
        tasks: f.next()?.to_string(),
    })
}

/// Which direction of a metric is good.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Lower,
    Higher,
}

/// One line of the table.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub metric: String,
    pub unit: String,
    pub candidate: Option<f64>,
    pub baseline: Option<f64>,
    /// candidate / baseline.
    pub ratio: Option<f64>,
    pub better: Better,
}

impl Row {
    pub fn new(
        metric: impl Into<String>,
        unit: &str,
        candidate: Option<f64>,
        baseline: Option<f64>,
        better: Better,
    ) -> Row {
        Row {
            metric: metric.into(),
            unit: unit.to_string(),
            candidate,
            baseline,
            ratio: crate::stats::ratio(candidate, baseline),
            better,
        }
    }

    /// "4.2x faster", "0.61x the baseline", ...: the ratio read in the
    /// metric's good direction.
    pub(crate) fn verdict(&self) -> String {
        let Some(r) = self.ratio else {
            return String::new();
        };
        match self.better {
            Better::Lower if r > 0.0 && r < 1.0 => format!("{:.1}x better", 1.0 / r),
            Better::Lower if r > 1.0 => format!("{r:.1}x worse"),
            Better::Higher if r > 1.0 => format!("{r:.2}x better"),
            Better::Higher if r > 0.0 && r < 1.0 => format!("{:.0}% of baseline", r * 100.0),
            _ => "same".into(),
        }
    }
}

/// The context every result is read in.
#[derive(Clone, Debug, Serialize)]
pub struct RunInfo {
    pub quick: bool,
    /// Cargo profile the benchmark was built with ("release" or "dev").
    pub profile: &'static str,
    /// `git describe --always --dirty` of the workspace, if available.
    pub revision: Option<String>,
    pub started_unix_s: u64,
    pub duration_s: f64,
    pub cpus: usize,
    pub kernel: Option<String>,
    pub load_before: Option<Load>,
    pub load_after: Option<Load>,
}

impl RunInfo {
    pub fn begin(quick: bool) -> RunInfo {
        RunInfo {
            quick,
            profile: if cfg!(debug_assertions) {
                "dev"
            } else {
                "release"
            },
            revision: git_revision(),
            started_unix_s: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            duration_s: 0.0,
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|s| s.trim().to_string()),
            load_before: Load::now(),
            load_after: None,
        }
    }

    pub fn end(&mut self, started: std::time::Instant) {
        self.duration_s = started.elapsed().as_secs_f64();
        self.load_after = Load::now();
    }
}

fn git_revision() -> Option<String> {
    let root = swarm_harness::paths::workspace_root();
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A benchmark's result: what was compared, the table, notes for the
/// reader, and benchmark-specific detail (raw samples) for the JSON.
#[derive(Debug, Serialize)]
pub struct Report {
    /// File name stem and table title: `failover`, `raft`.
    pub name: String,
    pub title: String,
    pub candidate: String,
    pub baseline: String,
    pub rows: Vec<Row>,
    /// Assumptions and caveats, printed under the table.
    pub notes: Vec<String>,
    pub run: RunInfo,
    pub details: serde_json::Value,
}

pub(crate) fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if a >= 1000.0 {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn fmt_val(v: Option<f64>, unit: &str) -> String {
    match v {
        Some(x) => format!("{} {unit}", fmt_num(x)),
        None => "n/a".into(),
    }
}

impl Report {
    /// The human-readable table and notes.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "\n== {}: {}", self.name, self.title);
        let _ = writeln!(s, "candidate: {}", self.candidate);
        let _ = writeln!(s, "baseline:  {}", self.baseline);
        let header = ["metric", "candidate", "baseline", "ratio c/b", ""];
        let cells: Vec<[String; 5]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.metric.clone(),
                    fmt_val(r.candidate, &r.unit),
                    fmt_val(r.baseline, &r.unit),
                    r.ratio.map_or_else(|| "n/a".into(), |x| format!("{x:.3}")),
                    r.verdict(),
                ]
            })
            .collect();
        let mut width = header.map(str::len);
        for row in &cells {
            for (w, c) in width.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cols: [&str; 5]| {
            let mut l = format!("{:<w$}", cols[0], w = width[0]);
            for (i, c) in cols.iter().enumerate().skip(1) {
                if i == 4 {
                    let _ = write!(l, "  {c}");
                } else {
                    let _ = write!(l, "  {c:>w$}", w = width[i]);
                }
            }
            l.trim_end().to_string()
        };
        let _ = writeln!(s, "{}", line(header));
        let _ = writeln!(
            s,
            "{}",
            "-".repeat(width.iter().sum::<usize>() + 2 * (width.len() - 1))
        );
        for row in &cells {
            let _ = writeln!(s, "{}", line([&row[0], &row[1], &row[2], &row[3], &row[4]]));
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        let r = &self.run;
        let load = |l: &Option<Load>| l.as_ref().map_or_else(|| "unknown".into(), Load::to_string);
        let _ = writeln!(
            s,
            "machine: {} CPUs, kernel {}; load before {}, after {}",
            r.cpus,
            r.kernel.as_deref().unwrap_or("unknown"),
            load(&r.load_before),
            load(&r.load_after)
        );
        let _ = writeln!(
            s,
            "run: {} build, {}{}, took {:.0} s",
            r.profile,
            r.revision.as_deref().unwrap_or("unknown revision"),
            if r.quick { ", --quick" } else { "" },
            r.duration_s
        );
        s
    }

    /// Writes `<dir>/<name>.json` and returns its path.
    pub fn write_json(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("{}.json", self.name));
        let json = serde_json::to_string_pretty(self).context("encoding the report")?;
        std::fs::write(&path, json + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loadavg_parses() {
        let l = parse_loadavg("0.86 1.24 2.50 1/83 18377\n").unwrap();
        assert_eq!((l.one, l.five, l.fifteen), (0.86, 1.24, 2.50));
        assert_eq!(l.tasks, "1/83");
        assert_eq!(parse_loadavg("garbage"), None);
    }

    #[test]
    fn verdicts_read_the_ratio_in_the_good_direction() {
        let faster = Row::new("t", "s", Some(1.0), Some(4.0), Better::Lower);
        assert_eq!(faster.verdict(), "4.0x better");
        let slower = Row::new("t", "s", Some(2.0), Some(1.0), Better::Lower);
        assert_eq!(slower.verdict(), "2.0x worse");
        let less = Row::new("r", "/s", Some(60.0), Some(100.0), Better::Higher);
        assert_eq!(less.verdict(), "60% of baseline");
        let none = Row::new("r", "/s", None, Some(100.0), Better::Higher);
        assert_eq!(none.verdict(), "");
    }
}
