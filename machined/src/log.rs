//! machined's own log: every line goes to the kernel log (/dev/kmsg) with a `machined:`
//! prefix, to the console when the kernel would not echo it there itself, and into a
//! bounded in-memory ring the node API serves (`service = "machined"`). Outside PID 1
//! (tests, a developer's host) lines go to stderr instead of the kernel log.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use basalt_api::LogLine;
use tokio::sync::broadcast;

/// Lines kept for the API; at ~100 bytes a line this is well under 1 MiB.
pub const RING_CAPACITY: usize = 4096;
/// The service name machined's own lines carry in the ring.
pub const SERVICE: &str = "machined";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    /// syslog priority for /dev/kmsg.
    fn priority(self) -> u8 {
        match self {
            Level::Error => 3,
            Level::Warn => 4,
            Level::Info => 5,
            Level::Debug => 7,
        }
    }
}

/// The bounded ring of machined's log lines, plus a broadcast for followers.
pub struct LogRing {
    lines: Mutex<VecDeque<LogLine>>,
    live: broadcast::Sender<LogLine>,
    capacity: usize,
}

// The API serves snapshot/subscribe (GET /v1/logs/machined); until it is wired they look unused.
#[allow(dead_code)]
impl LogRing {
    pub fn new(capacity: usize) -> LogRing {
        let (live, _) = broadcast::channel(256);
        LogRing {
            lines: Mutex::new(VecDeque::with_capacity(capacity.min(512))),
            live,
            capacity,
        }
    }

    pub fn push(&self, line: LogLine) {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() == self.capacity {
            lines.pop_front();
        }
        lines.push_back(line.clone());
        drop(lines);
        // No subscriber is the normal case.
        let _ = self.live.send(line);
    }

    /// The lines kept now, oldest first.
    pub fn snapshot(&self) -> Vec<LogLine> {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().cloned().collect()
    }

    /// Lines logged from now on (a lagging receiver skips what it missed).
    pub fn subscribe(&self) -> broadcast::Receiver<LogLine> {
        self.live.subscribe()
    }
}

struct Sinks {
    kmsg: Option<File>,
    console: Option<File>,
    /// Whether the kernel prints INFO-level kmsg lines on the console by itself.
    kernel_echoes_info: bool,
    stderr: bool,
    debug: bool,
}

struct Logger {
    ring: LogRing,
    sinks: Mutex<Sinks>,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

fn logger() -> &'static Logger {
    LOGGER.get_or_init(|| Logger {
        ring: LogRing::new(RING_CAPACITY),
        sinks: Mutex::new(Sinks {
            kmsg: None,
            console: None,
            kernel_echoes_info: false,
            stderr: true,
            debug: false,
        }),
    })
}

/// Chooses the outputs. As PID 1: /dev/kmsg (+ /dev/console when the console loglevel
/// hides our lines); otherwise stderr.
pub fn init(pid1: bool, debug: bool) {
    let logger = logger();
    let mut sinks = logger.sinks.lock().unwrap_or_else(|e| e.into_inner());
    sinks.debug = debug;
    if pid1 {
        sinks.kmsg = OpenOptions::new().write(true).open("/dev/kmsg").ok();
        sinks.console = OpenOptions::new().write(true).open("/dev/console").ok();
        sinks.kernel_echoes_info = console_loglevel().is_some_and(|l| Level::Info.priority() < l);
        sinks.stderr = sinks.kmsg.is_none() && sinks.console.is_none();
    }
}

fn console_loglevel() -> Option<u8> {
    std::fs::read_to_string("/proc/sys/kernel/printk")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The ring the API serves.
#[allow(dead_code)]
pub fn ring() -> &'static LogRing {
    &logger().ring
}

pub fn write(level: Level, message: String) {
    let logger = logger();
    {
        let mut sinks = logger.sinks.lock().unwrap_or_else(|e| e.into_inner());
        if level == Level::Debug && !sinks.debug {
            return;
        }
        let mut in_kmsg = false;
        if let Some(kmsg) = sinks.kmsg.as_mut() {
            // One write() is one kmsg record; long lines are cut by the kernel at ~1 KiB.
            in_kmsg = kmsg
                .write_all(format!("<{}>machined: {message}\n", level.priority()).as_bytes())
                .is_ok();
        }
        let echoed = in_kmsg
            && (sinks.kernel_echoes_info
                || console_loglevel().is_some_and(|l| level.priority() < l));
        if !echoed {
            if let Some(console) = sinks.console.as_mut() {
                let _ = console.write_all(format!("machined: {message}\n").as_bytes());
            } else if sinks.stderr {
                eprintln!("machined: {message}");
            }
        }
    }
    let timestamp_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    logger.ring.push(LogLine {
        service: SERVICE.to_owned(),
        timestamp_unix_ms,
        message,
    });
}

/// For the panic path: straight to fresh /dev/kmsg and /dev/console handles, never
/// through the logger's lock (the panic may have happened while it was held).
pub fn emergency(line: &str) {
    if let Ok(mut kmsg) = OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = kmsg.write_all(format!("<{}>{line}\n", Level::Error.priority()).as_bytes());
    }
    if console_loglevel().is_none_or(|l| Level::Error.priority() >= l)
        && let Ok(mut console) = OpenOptions::new().write(true).open("/dev/console")
    {
        let _ = console.write_all(format!("{line}\n").as_bytes());
    }
}

macro_rules! error {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Error, format!($($arg)*)) };
}
macro_rules! warning {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Warn, format!($($arg)*)) };
}
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Info, format!($($arg)*)) };
}
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Debug, format!($($arg)*)) };
}
#[allow(unused_imports)]
pub(crate) use {debug, error, info, warning};

#[cfg(test)]
mod tests {
    use super::*;

    fn line(n: usize) -> LogLine {
        LogLine {
            service: SERVICE.into(),
            timestamp_unix_ms: 0,
            message: format!("line {n}"),
        }
    }

    #[test]
    fn ring_keeps_the_newest_lines() {
        let ring = LogRing::new(3);
        for n in 0..5 {
            ring.push(line(n));
        }
        let kept: Vec<_> = ring.snapshot().into_iter().map(|l| l.message).collect();
        assert_eq!(kept, ["line 2", "line 3", "line 4"]);
    }

    #[tokio::test]
    async fn followers_see_new_lines() {
        let ring = LogRing::new(3);
        let mut rx = ring.subscribe();
        ring.push(line(7));
        assert_eq!(rx.recv().await.unwrap().message, "line 7");
    }

    #[test]
    fn logged_lines_reach_the_global_ring() {
        info!("ring test marker {}", 42);
        assert!(
            ring()
                .snapshot()
                .iter()
                .any(|l| l.message == "ring test marker 42" && l.service == "machined")
        );
    }
}
