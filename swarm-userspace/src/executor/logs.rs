//! Container logs in docker's json-file format, rotated by size: one JSON
//! object per line (`{"log":"text\n","stream":"stdout","time":"RFC 3339"}`)
//! in `<id>-json.log`, older files `<id>-json.log.1` (newest) to `.N`.
//!
//! Owns: the writer (used by the runtime's shim, which outlives the agent,
//! so logs keep flowing across agent restarts), splitting output into lines,
//! and the reader behind `task logs` / `service logs` (`--tail`,
//! `--timestamps`, follow across rotations). Never decides what to keep:
//! sizes come from the caller.
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// docker splits lines longer than this into several entries.
pub const MAX_LINE: usize = 16 * 1024;

/// When to rotate and how many files to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogOptions {
    /// Rotate once the current file would grow past this many bytes.
    pub max_size: u64,
    /// Files kept, the current one included (docker's `max-file`).
    pub max_files: u32,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            max_size: 10 * 1024 * 1024,
            max_files: 3,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The text, with its newline (absent on a split or final partial line).
    pub log: String,
    pub stream: Stream,
    #[serde(with = "rfc3339")]
    pub time: OffsetDateTime,
}

mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        let text = t.format(&Rfc3339).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let text = String::deserialize(d)?;
        OffsetDateTime::parse(&text, &Rfc3339).map_err(serde::de::Error::custom)
    }
}

impl Entry {
    /// The line as `logs` prints it: optionally prefixed with its timestamp
    /// (RFC 3339, nanoseconds), always ending in a newline.
    pub fn display(&self, timestamps: bool) -> String {
        let mut out = String::new();
        if timestamps {
            out.push_str(&self.time.format(&Rfc3339).unwrap_or_default());
            out.push(' ');
        }
        out.push_str(&self.log);
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out
    }
}

/// The path of rotated file `n` (0 is the current file).
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    if n == 0 {
        return path.to_path_buf();
    }
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Appends entries to a log file, rotating it by size.
#[derive(Debug)]
pub struct Writer {
    path: PathBuf,
    file: File,
    size: u64,
    options: LogOptions,
}

impl Writer {
    pub fn open(path: &Path, options: LogOptions) -> io::Result<Writer> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Writer {
            path: path.to_path_buf(),
            file,
            size,
            options,
        })
    }

    pub fn write(&mut self, entry: &Entry) -> io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(io::Error::other)?;
        line.push(b'\n');
        let len = line.len() as u64;
        if self.size > 0 && self.size + len > self.options.max_size {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.size += len;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let keep = self.options.max_files.max(1);
        if keep == 1 {
            // Only the current file is kept: start it over.
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        // .N-2 → .N-1 ... current → .1; the oldest falls off.
        for n in (0..keep - 1).rev() {
            let from = rotated(&self.path, n);
            if from.exists() {
                fs::rename(&from, rotated(&self.path, n + 1))?;
            }
        }
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// Splits one stream's output into lines (and pieces of at most
/// [`MAX_LINE`] bytes).
#[derive(Debug)]
pub struct LineSplitter {
    stream: Stream,
    buf: Vec<u8>,
}

impl LineSplitter {
    pub fn new(stream: Stream) -> LineSplitter {
        LineSplitter {
            stream,
            buf: Vec::new(),
        }
    }

    /// Adds output and returns the complete entries it finishes.
    pub fn push(&mut self, data: &[u8], now: OffsetDateTime) -> Vec<Entry> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        loop {
            let cut = match self.buf.iter().position(|b| *b == b'\n') {
                Some(i) if i < MAX_LINE => i + 1,
                _ if self.buf.len() >= MAX_LINE => MAX_LINE,
                _ => break,
            };
            let piece: Vec<u8> = self.buf.drain(..cut).collect();
            out.push(self.entry(&piece, now));
        }
        out
    }

    /// The partial last line, at end of stream.
    pub fn finish(&mut self, now: OffsetDateTime) -> Option<Entry> {
        if self.buf.is_empty() {
            return None;
        }
        let piece = std::mem::take(&mut self.buf);
        Some(self.entry(&piece, now))
    }

    fn entry(&self, piece: &[u8], now: OffsetDateTime) -> Entry {
        Entry {
            log: String::from_utf8_lossy(piece).into_owned(),
            stream: self.stream,
            time: now,
        }
    }
}

fn parse_lines(reader: impl BufRead, out: &mut Vec<Entry>) {
    for line in reader.lines().map_while(Result::ok) {
        // A torn last line (the writer was killed mid-write) is skipped.
        if let Ok(e) = serde_json::from_str::<Entry>(&line) {
            out.push(e);
        }
    }
}

/// Every entry of the log at `path`, oldest first, across rotated files;
/// only the last `tail` if given. A missing log is empty.
pub fn read(path: &Path, max_files: u32, tail: Option<usize>) -> io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    for n in (0..max_files.max(1)).rev() {
        match File::open(rotated(path, n)) {
            Ok(f) => parse_lines(BufReader::new(f), &mut out),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if let Some(t) = tail {
        let skip = out.len().saturating_sub(t);
        out.drain(..skip);
    }
    Ok(out)
}

/// Follows the current log file from its end (or from where [`read`] left
/// off), across rotations, like `logs -f`.
#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    file: Option<File>,
    inode: u64,
    pos: u64,
    partial: Vec<u8>,
}

impl Follower {
    /// Starts at the current end of the log.
    pub fn from_end(path: &Path) -> io::Result<Follower> {
        let mut f = Follower {
            path: path.to_path_buf(),
            file: None,
            inode: 0,
            pos: 0,
            partial: Vec::new(),
        };
        if let Ok(file) = File::open(path) {
            let m = file.metadata()?;
            f.inode = m.ino();
            f.pos = m.len();
            f.file = Some(file);
        }
        Ok(f)
    }

    /// The entries written since the last call (possibly none).
    pub fn poll(&mut self) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        let current = fs::metadata(&self.path).ok();
        let rotated_away = match (&self.file, &current) {
            (Some(_), Some(m)) => m.ino() != self.inode,
            (None, Some(_)) => true,
            (_, None) => false,
        };
        // Drain what is left of the old file before switching.
        self.drain(&mut out)?;
        if rotated_away && let Ok(file) = File::open(&self.path) {
            self.inode = file.metadata()?.ino();
            self.file = Some(file);
            self.pos = 0;
            self.partial.clear();
            self.drain(&mut out)?;
        }
        Ok(out)
    }

    fn drain(&mut self, out: &mut Vec<Entry>) -> io::Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        if file.metadata()?.len() < self.pos {
            // Truncated in place (max_files = 1): start over.
            self.pos = 0;
            self.partial.clear();
        }
        file.seek(SeekFrom::Start(self.pos))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        self.pos += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        if let Some(last) = self.partial.iter().rposition(|b| *b == b'\n') {
            let complete: Vec<u8> = self.partial.drain(..=last).collect();
            parse_lines(BufReader::new(complete.as_slice()), out);
        }
        Ok(())
    }
}

/// How often [`follow`] looks for new lines.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);

/// Entries of `path`, the last `tail` (all if `None`) and then, while `keep`
/// returns true, new ones as they are written; each batch goes to `emit`.
pub async fn follow(
    path: &Path,
    max_files: u32,
    tail: Option<usize>,
    mut keep: impl FnMut() -> bool,
    mut emit: impl FnMut(Vec<Entry>) -> bool,
) -> io::Result<()> {
    // Position the follower first so nothing written meanwhile is lost;
    // entries written between the two may show twice, never zero times.
    let mut follower = Follower::from_end(path)?;
    if !emit(read(path, max_files, tail)?) {
        return Ok(());
    }
    while keep() {
        tokio::time::sleep(FOLLOW_INTERVAL).await;
        let batch = follower.poll()?;
        if !batch.is_empty() && !emit(batch) {
            break;
        }
    }
    Ok(())
}

/// Where a container's log lives: what [`super::Controller::log_source`]
/// hands to `logs` readers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSource {
    pub path: PathBuf,
    pub max_files: u32,
}

impl LogSource {
    /// The last `tail` entries (all if `None`).
    pub fn read(&self, tail: Option<usize>) -> io::Result<Vec<Entry>> {
        read(&self.path, self.max_files, tail)
    }
}

/// `now`, for the writer.
pub fn now() -> OffsetDateTime {
    OffsetDateTime::from(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap()
    }

    fn entry(text: &str) -> Entry {
        Entry {
            log: text.into(),
            stream: Stream::Stdout,
            time: t(),
        }
    }

    #[test]
    fn json_matches_docker() {
        let json = serde_json::to_string(&entry("hi\n")).unwrap();
        assert_eq!(
            json,
            r#"{"log":"hi\n","stream":"stdout","time":"2023-11-14T22:13:20.123456789Z"}"#
        );
        assert_eq!(
            entry("hi\n").display(true),
            "2023-11-14T22:13:20.123456789Z hi\n"
        );
        assert_eq!(entry("partial").display(false), "partial\n");
    }

    #[test]
    fn splitter_cuts_lines_and_long_runs() {
        let mut s = LineSplitter::new(Stream::Stderr);
        assert!(s.push(b"hel", t()).is_empty());
        let e = s.push(b"lo\nwor", t());
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].log, "hello\n");
        assert_eq!(e[0].stream, Stream::Stderr);
        assert_eq!(s.finish(t()).unwrap().log, "wor");
        assert!(s.finish(t()).is_none());

        let long = vec![b'x'; MAX_LINE * 2 + 10];
        let e = s.push(&long, t());
        assert_eq!(e.len(), 2);
        assert!(e.iter().all(|e| e.log.len() == MAX_LINE));
        assert_eq!(s.finish(t()).unwrap().log.len(), 10);
    }

    #[test]
    fn rotation_keeps_max_files_and_read_orders_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c-json.log");
        let options = LogOptions {
            max_size: 300,
            max_files: 3,
        };
        let mut w = Writer::open(&path, options).unwrap();
        for i in 0..40 {
            w.write(&entry(&format!("line {i}\n"))).unwrap();
        }
        assert!(rotated(&path, 1).exists() && rotated(&path, 2).exists());
        assert!(!rotated(&path, 3).exists());
        for n in 0..3 {
            assert!(fs::metadata(rotated(&path, n)).unwrap().len() <= 300);
        }
        let all = read(&path, 3, None).unwrap();
        let nums: Vec<usize> = all
            .iter()
            .map(|e| e.log.trim().trim_start_matches("line ").parse().unwrap())
            .collect();
        // Consecutive, ending with the last line written; the oldest were
        // rotated away.
        assert_eq!(*nums.last().unwrap(), 39);
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1));
        assert!(nums[0] > 0);
        let tail = read(&path, 3, Some(2)).unwrap();
        assert_eq!(tail.len(), 2);
        assert_eq!(tail[1].log, "line 39\n");
        // Reopening continues the same file.
        drop(w);
        let mut w = Writer::open(&path, options).unwrap();
        w.write(&entry("again\n")).unwrap();
        assert_eq!(read(&path, 3, Some(1)).unwrap()[0].log, "again\n");
        assert!(
            read(&dir.path().join("missing"), 3, None)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn single_file_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c-json.log");
        let mut w = Writer::open(
            &path,
            LogOptions {
                max_size: 200,
                max_files: 1,
            },
        )
        .unwrap();
        for i in 0..20 {
            w.write(&entry(&format!("line {i}\n"))).unwrap();
        }
        assert!(!rotated(&path, 1).exists());
        assert!(fs::metadata(&path).unwrap().len() <= 200);
    }

    #[test]
    fn follower_sees_appends_and_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c-json.log");
        let options = LogOptions {
            max_size: 250,
            max_files: 2,
        };
        let mut w = Writer::open(&path, options).unwrap();
        w.write(&entry("before\n")).unwrap();
        let mut f = Follower::from_end(&path).unwrap();
        assert!(f.poll().unwrap().is_empty());
        let mut seen = Vec::new();
        for i in 0..12 {
            w.write(&entry(&format!("l{i}\n"))).unwrap();
            seen.extend(f.poll().unwrap().into_iter().map(|e| e.log));
        }
        let want: Vec<String> = (0..12).map(|i| format!("l{i}\n")).collect();
        assert_eq!(seen, want);
    }

    #[tokio::test(start_paused = true)]
    async fn follow_emits_tail_then_new_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c-json.log");
        let mut w = Writer::open(&path, LogOptions::default()).unwrap();
        for i in 0..5 {
            w.write(&entry(&format!("old {i}\n"))).unwrap();
        }
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            w.write(&entry("new\n")).unwrap();
        });
        writer.join().unwrap();
        let mut got = Vec::new();
        let mut rounds = 0;
        follow(
            &path,
            3,
            Some(2),
            || {
                rounds += 1;
                rounds < 5
            },
            |batch| {
                got.extend(batch.into_iter().map(|e| e.log));
                true
            },
        )
        .await
        .unwrap();
        // The tail, and "new" (written before follow began, so it is
        // already in the tail and not repeated).
        assert_eq!(got, ["old 4\n", "new\n"]);
    }
}
