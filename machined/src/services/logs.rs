//! Service logs: a bounded in-memory ring per service (what `logs` and the status show,
//! with live subscribers for `follow`), and an append-only file under the log
//! directory, rotated once it reaches a size bound so /var never fills up.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

/// Where a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
    /// Written by the supervisor itself: spawn errors, cgroup warnings, exits.
    Supervisor,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
            Self::Supervisor => "supervisor",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub time: SystemTime,
    pub stream: LogStream,
    pub text: String,
}

impl LogLine {
    pub fn unix_ms(&self) -> u64 {
        unix_ms(self.time)
    }
}

pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64)
        .unwrap_or(0)
}

/// Bounds of a ring and its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    pub ring_lines: usize,
    pub ring_bytes: usize,
    /// The file is rotated to `<name>.log.1` once it exceeds this many bytes.
    pub file_bytes: u64,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            ring_lines: 1000,
            ring_bytes: 1 << 20,
            file_bytes: 10 << 20,
        }
    }
}

/// Lines longer than this are cut; a runaway process without newlines must not grow a
/// single line without bound.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

struct RingInner {
    lines: VecDeque<LogLine>,
    bytes: usize,
    file: Option<LogFile>,
}

/// One service's log: ring, file and live subscribers. Pushing and subscribing take the
/// same lock, so a follower sees every line exactly once: the backlog, then the rest.
pub struct LogRing {
    inner: Mutex<RingInner>,
    live: broadcast::Sender<LogLine>,
    limits: LogLimits,
}

impl LogRing {
    pub fn new(limits: LogLimits) -> Self {
        let (live, _) = broadcast::channel(1024);
        Self {
            inner: Mutex::new(RingInner {
                lines: VecDeque::new(),
                bytes: 0,
                file: None,
            }),
            live,
            limits,
        }
    }

    /// Appends to `path` from now on (opened lazily: /var may not be mounted yet when
    /// the service is registered). `None` keeps the ring only.
    pub fn set_file(&self, path: Option<PathBuf>) {
        let mut inner = lock(&self.inner);
        inner.file = path.map(|p| LogFile::new(p, self.limits.file_bytes));
    }

    pub fn push(&self, stream: LogStream, text: &str) {
        let mut text = text.trim_end_matches(['\n', '\r']).to_owned();
        if text.len() > MAX_LINE_BYTES {
            let mut cut = MAX_LINE_BYTES;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        let line = LogLine {
            time: SystemTime::now(),
            stream,
            text,
        };
        let mut inner = lock(&self.inner);
        if let Some(file) = inner.file.as_mut() {
            file.append(&line);
        }
        inner.bytes += line.text.len();
        inner.lines.push_back(line.clone());
        while inner.lines.len() > self.limits.ring_lines
            || (inner.bytes > self.limits.ring_bytes && inner.lines.len() > 1)
        {
            if let Some(old) = inner.lines.pop_front() {
                inner.bytes -= old.text.len();
            }
        }
        // No receiver is fine: nobody follows right now.
        let _ = self.live.send(line);
    }

    /// The last `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<LogLine> {
        let inner = lock(&self.inner);
        let skip = inner.lines.len().saturating_sub(n);
        inner.lines.iter().skip(skip).cloned().collect()
    }

    /// Everything in the ring, then (with `follow`) every new line as it arrives.
    pub fn stream(&self, follow: bool) -> LogFollower {
        let inner = lock(&self.inner);
        LogFollower {
            backlog: inner.lines.clone(),
            live: follow.then(|| self.live.subscribe()),
        }
    }
}

/// A reader of one service's log; see [`LogRing::stream`].
pub struct LogFollower {
    backlog: VecDeque<LogLine>,
    live: Option<broadcast::Receiver<LogLine>>,
}

impl LogFollower {
    /// The backlog and the live receiver, for callers that stream on their own.
    pub fn into_parts(self) -> (Vec<LogLine>, Option<broadcast::Receiver<LogLine>>) {
        (self.backlog.into_iter().collect(), self.live)
    }

    /// The backlog, without waiting for anything new.
    pub fn collect_now(self) -> Vec<LogLine> {
        self.backlog.into_iter().collect()
    }

    /// The next line; `None` at the end of the backlog when not following.
    pub async fn next(&mut self) -> Option<LogLine> {
        if let Some(line) = self.backlog.pop_front() {
            return Some(line);
        }
        let live = self.live.as_mut()?;
        match live.recv().await {
            Ok(line) => Some(line),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(LogLine {
                time: SystemTime::now(),
                stream: LogStream::Supervisor,
                text: format!("… {n} lines skipped: this reader fell behind"),
            }),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// `/var/log/<service>.log`, appended line by line, rotated to `.1` at a size bound.
/// Failures to write are not fatal (the ring still has the lines); the file is retried
/// on the next line.
struct LogFile {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max: u64,
}

impl LogFile {
    fn new(path: PathBuf, max: u64) -> Self {
        Self {
            path,
            file: None,
            size: 0,
            max,
        }
    }

    fn append(&mut self, line: &LogLine) {
        if self.file.is_none() {
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .ok();
            self.size = self
                .file
                .as_ref()
                .and_then(|f| f.metadata().ok())
                .map_or(0, |m| m.len());
        }
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let record = format_record(line);
        if file.write_all(record.as_bytes()).is_err() {
            self.file = None;
            return;
        }
        self.size += record.len() as u64;
        if self.size >= self.max {
            self.file = None;
            let _ = std::fs::rename(&self.path, rotated(&self.path));
            self.size = 0;
        }
    }
}

fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// `<unix ms> <stream> <text>`: sortable, greppable, one line per record.
fn format_record(line: &LogLine) -> String {
    format!(
        "{} {} {}\n",
        line.unix_ms(),
        line.stream.as_str(),
        line.text
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a log lock leaves plain data behind; keep logging.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(lines: usize, bytes: usize, file: u64) -> LogLimits {
        LogLimits {
            ring_lines: lines,
            ring_bytes: bytes,
            file_bytes: file,
        }
    }

    fn texts(lines: &[LogLine]) -> Vec<String> {
        lines.iter().map(|l| l.text.clone()).collect()
    }

    #[test]
    fn ring_keeps_the_last_lines_within_both_bounds() {
        let ring = LogRing::new(limits(3, 1 << 20, 1 << 20));
        for i in 0..5 {
            ring.push(LogStream::Stdout, &format!("line {i}\n"));
        }
        assert_eq!(texts(&ring.tail(10)), vec!["line 2", "line 3", "line 4"]);
        assert_eq!(texts(&ring.tail(1)), vec!["line 4"]);

        let ring = LogRing::new(limits(100, 10, 1 << 20));
        ring.push(LogStream::Stdout, "aaaa");
        ring.push(LogStream::Stdout, "bbbb");
        ring.push(LogStream::Stdout, "cccc");
        assert_eq!(texts(&ring.tail(10)), vec!["bbbb", "cccc"]);
    }

    #[test]
    fn overlong_lines_are_cut_on_a_char_boundary() {
        let ring = LogRing::new(LogLimits::default());
        let long = "é".repeat(MAX_LINE_BYTES);
        ring.push(LogStream::Stderr, &long);
        let got = &ring.tail(1)[0].text;
        assert!(got.len() <= MAX_LINE_BYTES && got.len() >= MAX_LINE_BYTES - 1);
    }

    #[tokio::test]
    async fn follow_sees_backlog_then_live_lines_exactly_once() {
        let ring = LogRing::new(LogLimits::default());
        ring.push(LogStream::Stdout, "before");
        let mut all = ring.stream(false);
        let mut follower = ring.stream(true);
        ring.push(LogStream::Stderr, "after");
        assert_eq!(follower.next().await.unwrap().text, "before");
        let line = follower.next().await.unwrap();
        assert_eq!(
            (line.text.as_str(), line.stream),
            ("after", LogStream::Stderr)
        );
        assert_eq!(all.next().await.unwrap().text, "before");
        assert_eq!(all.next().await, None);
    }

    #[test]
    fn file_is_appended_and_rotated_at_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc.log");
        // Records are 40 bytes ("<13-digit ms> stdout first line of text\n") and 33
        // bytes; the third one crosses 100 and rotates.
        let ring = LogRing::new(limits(10, 1 << 20, 100));
        ring.set_file(Some(path.clone()));
        ring.push(LogStream::Stdout, "first line of text");
        let content = std::fs::read_to_string(&path).unwrap();
        assert!(
            content.ends_with(" stdout first line of text\n"),
            "{content}"
        );
        for i in 0..3 {
            ring.push(LogStream::Stderr, &format!("more text {i}"));
        }
        let old = std::fs::read_to_string(rotated(&path)).unwrap();
        assert_eq!(old.lines().count(), 3, "{old}");
        assert!(
            old.contains("first line of text") && old.contains("more text 1"),
            "{old}"
        );
        let new = std::fs::read_to_string(&path).unwrap();
        assert_eq!(new.lines().count(), 1, "{new}");
        assert!(new.ends_with(" stderr more text 2\n"), "{new}");
    }

    #[test]
    fn an_unwritable_file_does_not_lose_ring_lines() {
        let ring = LogRing::new(LogLimits::default());
        ring.set_file(Some(PathBuf::from("/nonexistent-dir/x.log")));
        ring.push(LogStream::Stdout, "kept");
        assert_eq!(texts(&ring.tail(1)), vec!["kept"]);
    }
}
