//! `GET /v1/dmesg`: the kernel log read from /dev/kmsg, where every read() returns exactly
//! one record `priority,sequence,timestamp_us,flags[,…];message` (Documentation/ABI/testing/dev-kmsg).

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use basalt_api::KernelLogLine;
use bytes::Bytes;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

/// Decodes one record; `None` for what is not a record (continuation lines are dropped,
/// as dmesg does without `-x`).
pub fn parse_record(record: &[u8]) -> Option<KernelLogLine> {
    let text = String::from_utf8_lossy(record);
    let (header, rest) = text.split_once(';')?;
    let mut fields = header.split(',');
    let priority: u32 = fields.next()?.parse().ok()?;
    let sequence: u64 = fields.next()?.parse().ok()?;
    let timestamp_us: u64 = fields.next()?.parse().ok()?;
    // The message ends at the first newline; lines after it are " KEY=value" dictionary.
    let message = rest.split('\n').next().unwrap_or("");
    Some(KernelLogLine {
        facility: u8::try_from(priority >> 3).unwrap_or(u8::MAX),
        level: (priority & 7) as u8,
        sequence,
        timestamp_us,
        message: unescape(message),
    })
}

/// The kernel escapes non-printable bytes as `\xNN`; show them as they were.
fn unescape(message: &str) -> String {
    let mut out = Vec::with_capacity(message.len());
    let bytes = message.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'\\' && i + 4 <= bytes.len() && bytes[i + 1] == b'x')
            .then(|| std::str::from_utf8(&bytes[i + 2..i + 4]).ok())
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        if let Some(b) = escaped {
            out.push(b);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Opens the kernel log without blocking, so that reading past the end says "no more"
/// instead of waiting, and a follower can wait for readiness alongside a closed client.
pub fn open(path: &Path) -> Result<AsyncFd<std::fs::File>, std::io::Error> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    // SAFETY: the File owns its descriptor and the AsyncFd owns the File, so the fd is
    // neither closed nor replaced while registered.
    unsafe { Ok(AsyncFd::register(file)?) }
}

/// Sends every record to `tx` as one NDJSON line: the backlog, then (with `follow`) new
/// records as the kernel writes them. Ends when the client goes away or, without
/// `follow`, at the end of the backlog.
pub async fn stream(fd: AsyncFd<std::fs::File>, follow: bool, tx: mpsc::Sender<Bytes>) {
    // One record is at most ~8 KiB (PRINTK_MESSAGE_MAX / LOG_LINE_MAX).
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match fd.get_ref().read(&mut buf) {
            Ok(n) if n > 0 => n,
            Ok(_) => 0,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            // EPIPE: records were overwritten before we read them; carry on from the oldest kept.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = tx
                    .send(super::error_line(&format!("reading the kernel log: {e}")))
                    .await;
                return;
            }
        };
        if n == 0 {
            if !follow {
                return;
            }
            tokio::select! {
                ready = fd.readable() => match ready {
                    Ok(mut guard) => guard.clear_ready(),
                    Err(_) => return,
                },
                () = tx.closed() => return,
            }
            continue;
        }
        if let Some(line) = parse_record(&buf[..n])
            && tx.send(super::ndjson_line(&line)).await.is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_records_and_drops_dictionary_lines() {
        let line =
            parse_record(b"6,339,5140900,-;NET: Registered protocol family 10\n SUBSYSTEM=net\n")
                .unwrap();
        assert_eq!(line.facility, 0);
        assert_eq!(line.level, 6);
        assert_eq!(line.sequence, 339);
        assert_eq!(line.timestamp_us, 5_140_900);
        assert_eq!(line.message, "NET: Registered protocol family 10");
        let user = parse_record(b"14,1,2,-,caller=T1;hello \\x1b world\n").unwrap();
        assert_eq!(user.facility, 1);
        assert_eq!(user.level, 6);
        assert_eq!(user.message, "hello \u{1b} world");
        assert!(parse_record(b"garbage").is_none());
    }
}
