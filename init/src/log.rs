//! basalt-init's log: every line goes to the kernel log (/dev/kmsg), so it is kept in
//! dmesg with a timestamp, and to /dev/console when the kernel would not show a kmsg line
//! there itself (`quiet`, low loglevel) — the user sees each line exactly once.
//! Before /dev exists, lines wait in memory and are flushed when [`reopen`] finds it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::Mutex;

/// kmsg priority of normal lines: NOTICE (5).
const NOTICE: u8 = 5;
/// kmsg priority of failures: ERR (3), shown on the console even with `quiet`.
const ERR: u8 = 3;

/// Lines carry this prefix unless they already start with it (the banner).
const PREFIX: &str = "basalt-init: ";

struct Sink {
    kmsg: Option<File>,
    console: Option<File>,
    /// Whether the kernel prints NOTICE lines to the console by itself.
    kernel_echoes: bool,
    pending: Vec<(u8, String)>,
}

static SINK: Mutex<Sink> = Mutex::new(Sink {
    kmsg: None,
    console: None,
    kernel_echoes: false,
    pending: Vec::new(),
});

/// (Re)opens /dev/kmsg and /dev/console and flushes what was logged before they existed.
pub fn reopen() {
    let Ok(mut sink) = SINK.lock() else { return };
    sink.kmsg = OpenOptions::new().write(true).open("/dev/kmsg").ok();
    sink.console = OpenOptions::new().write(true).open("/dev/console").ok();
    sink.kernel_echoes = kernel_echoes(NOTICE);
    let pending = std::mem::take(&mut sink.pending);
    for (level, line) in pending {
        emit(&mut sink, level, &line);
    }
}

/// The first field of /proc/sys/kernel/printk is the console loglevel: messages with a
/// lower (more urgent) level are printed on the console.
fn kernel_echoes(level: u8) -> bool {
    std::fs::read_to_string("/proc/sys/kernel/printk")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u8>().ok())
        .is_some_and(|console_level| level < console_level)
}

fn emit(sink: &mut Sink, level: u8, line: &str) {
    let mut wrote_kmsg = false;
    if let Some(kmsg) = sink.kmsg.as_mut() {
        // One write() is one kmsg record.
        wrote_kmsg = kmsg
            .write_all(format!("<{level}>{}\n", prefixed(line)).as_bytes())
            .is_ok();
    }
    let echoed = wrote_kmsg && (sink.kernel_echoes || (level == ERR && kernel_echoes(ERR)));
    if !echoed {
        match sink.console.as_mut() {
            Some(console) => {
                let _ = console.write_all(format!("{}\n", prefixed(line)).as_bytes());
            }
            None if sink.kmsg.is_none() => sink.pending.push((level, line.to_owned())),
            None => {}
        }
    }
}

fn prefixed(line: &str) -> std::borrow::Cow<'_, str> {
    if line.starts_with("basalt-init") {
        line.into()
    } else {
        format!("{PREFIX}{line}").into()
    }
}

/// The first line, `basalt-init <version>: starting`, without the usual prefix.
pub fn banner(line: &str) {
    write_info(line);
}

pub fn write_info(line: &str) {
    if let Ok(mut sink) = SINK.lock() {
        emit(&mut sink, NOTICE, line);
    }
}

pub fn write_error(line: &str) {
    if let Ok(mut sink) = SINK.lock() {
        emit(&mut sink, ERR, line);
    }
}

/// For the panic path: writes straight to fresh /dev/kmsg and /dev/console handles,
/// never through the sink's lock (the panic may have happened while it was held).
pub fn emergency(line: &str) {
    if let Ok(mut kmsg) = OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = kmsg.write_all(format!("<{ERR}>{line}\n").as_bytes());
    }
    if !kernel_echoes(ERR)
        && let Ok(mut console) = OpenOptions::new().write(true).open("/dev/console")
    {
        let _ = console.write_all(format!("{line}\n").as_bytes());
    }
}

/// Closes the files so exec() does not leak them into machined.
pub fn close() {
    if let Ok(mut sink) = SINK.lock() {
        sink.kmsg = None;
        sink.console = None;
    }
}

macro_rules! info {
    ($($arg:tt)*) => { $crate::log::write_info(&format!($($arg)*)) };
}
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::write_error(&format!($($arg)*)) };
}
pub(crate) use {error, info};
