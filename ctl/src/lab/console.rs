//! Watching a serial console that QEMU writes to a file.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use super::qemu::{QemuError, Result};

/// A console log file being written by a guest. Reads are whole-file and lossy (the
/// kernel may print partial UTF-8 or control bytes); the logs are small enough.
#[derive(Debug, Clone)]
pub struct ConsoleLog {
    path: PathBuf,
}

impl ConsoleLog {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ConsoleLog { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Everything written so far (empty if the file does not exist yet).
    pub fn read(&self) -> Result<String> {
        match std::fs::read(&self.path) {
            Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).replace('\r', "")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(source) => Err(QemuError::ConsoleLogRead {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// The last `n` lines, for error messages.
    pub fn tail(&self, n: usize) -> String {
        let text = self.read().unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Polls until a line contains `pattern`; returns that line. `exited` is asked
    /// between polls whether the writer is gone, to fail fast instead of timing out.
    pub fn wait_for(
        &self,
        pattern: &str,
        timeout: Duration,
        exited: impl FnMut() -> Option<ExitStatus>,
    ) -> Result<String> {
        self.wait_for_after(0, pattern, timeout, exited)
            .map(|(line, _)| line)
    }

    /// Like [`Self::wait_for`] but only considers text from byte `offset` of the
    /// (normalised) log on; returns the line and the offset just past it, so a caller can
    /// wait for a sequence of events.
    pub fn wait_for_after(
        &self,
        offset: usize,
        pattern: &str,
        timeout: Duration,
        mut exited: impl FnMut() -> Option<ExitStatus>,
    ) -> Result<(String, usize)> {
        let deadline = Instant::now() + timeout;
        loop {
            // Check for exit before reading so the last read sees everything written.
            let status = exited();
            let text = self.read()?;
            if let Some(found) = find_line(&text, offset, pattern) {
                return Ok(found);
            }
            if let Some(status) = status {
                return Err(QemuError::ExitedBeforePattern {
                    pattern: pattern.to_owned(),
                    status,
                    log: self.path.clone(),
                    tail: self.tail(40),
                    qemu_stderr: String::new(),
                });
            }
            if Instant::now() >= deadline {
                return Err(QemuError::ConsoleTimeout {
                    pattern: pattern.to_owned(),
                    timeout,
                    log: self.path.clone(),
                    tail: self.tail(40),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Finds the first complete-or-partial line at or after `offset` containing `pattern`.
fn find_line(text: &str, offset: usize, pattern: &str) -> Option<(String, usize)> {
    let start = offset.min(text.len());
    let start = (start..=text.len()).find(|&i| text.is_char_boundary(i))?;
    let idx = text[start..].find(pattern)? + start;
    let line_start = text[..idx].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[idx..].find('\n').map_or(text.len(), |i| idx + i);
    Some((text[line_start..line_end].to_owned(), line_end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command, Stdio};

    #[test]
    fn find_line_returns_whole_line_and_next_offset() {
        let text = "a\nbasalt-init: mounted /proc (1 ms)\nmachined: phase cgroups done\n";
        let (line, next) = find_line(text, 0, "mounted").unwrap();
        assert_eq!(line, "basalt-init: mounted /proc (1 ms)");
        assert_eq!(&text[next..next + 1], "\n");
        assert!(find_line(text, next, "mounted").is_none());
        assert_eq!(
            find_line(text, next, "phase").unwrap().0,
            "machined: phase cgroups done"
        );
    }

    /// A log writer that stands in for QEMU. The shell `exec`s its final wait, so the
    /// process we hold is the only one left holding the inherited pipes: killing and
    /// reaping it (also when an assertion fails first) leaves nothing behind.
    struct Writer(Child);

    impl Writer {
        fn spawn(script: &str) -> Writer {
            Writer(
                Command::new("sh")
                    .arg("-c")
                    .arg(script)
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap(),
            )
        }

        /// Kills the writer and returns how it was reaped.
        fn stop(&mut self) -> ExitStatus {
            let _ = self.0.kill();
            self.0.wait().unwrap()
        }
    }

    impl Drop for Writer {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// A real child process writes the log slowly; the wait sees the line appear.
    #[test]
    fn waits_for_a_line_a_child_process_prints_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut writer = Writer::spawn(&format!(
            "echo booting > {p}; sleep 0.3; printf 'basalt-init: switch_root\\r\\n' >> {p}; exec sleep 5",
            p = path.display()
        ));
        let log = ConsoleLog::new(&path);
        let line = log
            .wait_for("switch_root", Duration::from_secs(10), || {
                writer.0.try_wait().ok().flatten()
            })
            .unwrap();
        assert_eq!(line, "basalt-init: switch_root");
        let err = log
            .wait_for("machined", Duration::from_millis(200), || None)
            .unwrap_err();
        assert!(matches!(err, QemuError::ConsoleTimeout { .. }));
        assert!(err.to_string().contains("booting"), "{err}");
        // The process we kill is the last one the writer runs, with no children of its
        // own that could outlive the test holding its output pipes.
        let pid = writer.0.id();
        assert_eq!(
            std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap(),
            "sleep\n"
        );
        let children = format!("/proc/{pid}/task/{pid}/children");
        assert_eq!(std::fs::read_to_string(children).unwrap(), "");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            writer.stop().signal(),
            Some(9),
            "still running until killed"
        );
    }

    /// A writer that is gone ends the wait at once with its exit status, instead of
    /// running into the timeout.
    #[test]
    fn a_writer_that_exits_ends_the_wait_early() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut writer =
            Writer::spawn(&format!("echo 'kernel panic' > {}; exit 3", path.display()));
        let started = Instant::now();
        let err = ConsoleLog::new(&path)
            .wait_for("switch_root", Duration::from_secs(10), || {
                writer.0.try_wait().ok().flatten()
            })
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        match err {
            QemuError::ExitedBeforePattern { status, tail, .. } => {
                assert_eq!(status.code(), Some(3));
                assert!(tail.contains("kernel panic"), "{tail}");
            }
            other => panic!("expected ExitedBeforePattern, got {other}"),
        }
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        let tail = ConsoleLog::new(&path).tail(40);
        assert_eq!(tail.lines().count(), 40);
        assert!(tail.starts_with("line 60") && tail.ends_with("line 99"));
    }
}
