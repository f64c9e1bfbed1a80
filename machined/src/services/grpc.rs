//! Just enough gRPC to ask containerd who it is: one unary call over HTTP/2 on its unix
//! socket, with the protobuf messages encoded and decoded by hand. The `Version` call is
//! what `ctr version` does, so a successful answer proves containerd's API is serving.

use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::net::UnixStream;

use super::error::ServiceError;

const VERSION_METHOD: &str = "/containerd.services.version.v1.Version/Version";

/// `containerd.services.version.v1.VersionResponse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdVersion {
    pub version: String,
    pub revision: String,
}

/// Calls `Version` on the containerd listening at `socket`.
pub async fn containerd_version(
    socket: &Path,
    timeout: Duration,
) -> Result<ContainerdVersion, ServiceError> {
    let err = |reason: String| ServiceError::Grpc {
        method: VERSION_METHOD,
        socket: socket.to_owned(),
        reason,
    };
    // The request is the empty message `google.protobuf.Empty`.
    let call = unary(socket, VERSION_METHOD, Bytes::new());
    let message = tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| err(format!("no answer within {}ms", timeout.as_millis())))?
        .map_err(err)?;
    decode_version(&message).map_err(err)
}

/// One unary gRPC call: sends `request` (an encoded protobuf message) and returns the
/// encoded response message.
async fn unary(socket: &Path, method: &str, request: Bytes) -> Result<Bytes, String> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let (client, connection) = h2::client::handshake(stream)
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    let driver = tokio::spawn(async move {
        // Ends with an error when we drop the client; nothing to report then.
        let _ = connection.await;
    });
    let result = async {
        let mut client = client
            .ready()
            .await
            .map_err(|e| format!("HTTP/2 connection: {e}"))?;
        let request_head = http::Request::builder()
            .method(http::Method::POST)
            // The authority is not checked on a unix socket, but HTTP/2 needs one.
            .uri(format!("http://localhost{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .map_err(|e| format!("building the request: {e}"))?;
        let (response, mut send) = client
            .send_request(request_head, false)
            .map_err(|e| format!("sending the request: {e}"))?;
        send.send_data(frame(&request), true)
            .map_err(|e| format!("sending the request body: {e}"))?;
        let response = response
            .await
            .map_err(|e| format!("waiting for the response: {e}"))?;
        if response.status() != http::StatusCode::OK {
            return Err(format!("HTTP status {}", response.status()));
        }
        let (head, mut body) = response.into_parts();
        // A "trailers-only" response carries the gRPC status in the headers.
        check_grpc_status(&head.headers)?;
        let mut data = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| format!("reading the response: {e}"))?;
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        match body
            .trailers()
            .await
            .map_err(|e| format!("reading the trailers: {e}"))?
        {
            Some(trailers) => check_grpc_status(&trailers)?,
            None if head.headers.contains_key("grpc-status") => {}
            None => return Err("the response ended without a gRPC status".to_owned()),
        }
        unframe(&data).map(Bytes::copy_from_slice)
    }
    .await;
    driver.abort();
    result
}

fn check_grpc_status(headers: &http::HeaderMap) -> Result<(), String> {
    let Some(status) = headers.get("grpc-status") else {
        return Ok(());
    };
    if status.as_bytes() == b"0" {
        return Ok(());
    }
    let message = headers
        .get("grpc-message")
        .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
        .unwrap_or_default();
    Err(format!(
        "gRPC status {}: {message}",
        String::from_utf8_lossy(status.as_bytes())
    ))
}

/// The gRPC length-prefixed message: 1 byte "compressed" flag, 4 bytes big-endian length.
fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out.freeze()
}

fn unframe(data: &[u8]) -> Result<&[u8], String> {
    let [compressed, a, b, c, d, rest @ ..] = data else {
        return Err(format!(
            "the response is {} bytes, shorter than a gRPC frame header",
            data.len()
        ));
    };
    if *compressed != 0 {
        return Err("the response is compressed, which was not negotiated".to_owned());
    }
    let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
    rest.get(..len).ok_or_else(|| {
        format!(
            "the response frame announces {len} bytes but carries {}",
            rest.len()
        )
    })
}

fn varint(buf: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf
            .get(*at)
            .ok_or_else(|| "truncated varint in the response".to_owned())?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("overlong varint in the response".to_owned())
}

/// Decodes `VersionResponse { string version = 1; string revision = 2; }`, skipping
/// fields a newer containerd may add.
fn decode_version(msg: &[u8]) -> Result<ContainerdVersion, String> {
    let mut out = ContainerdVersion {
        version: String::new(),
        revision: String::new(),
    };
    let mut at = 0;
    while at < msg.len() {
        let key = varint(msg, &mut at)?;
        let (field, wire_type) = (key >> 3, key & 7);
        match wire_type {
            0 => {
                varint(msg, &mut at)?;
            }
            1 => at += 8,
            5 => at += 4,
            2 => {
                let len = usize::try_from(varint(msg, &mut at)?)
                    .map_err(|_| "field length out of range".to_owned())?;
                let value = msg
                    .get(at..at.saturating_add(len))
                    .ok_or_else(|| format!("field {field} runs past the end of the message"))?;
                at += len;
                let text = || {
                    String::from_utf8(value.to_vec())
                        .map_err(|_| format!("field {field} is not UTF-8"))
                };
                match field {
                    1 => out.version = text()?,
                    2 => out.revision = text()?,
                    _ => {}
                }
            }
            other => return Err(format!("unsupported protobuf wire type {other}")),
        }
        if at > msg.len() {
            return Err("a field runs past the end of the message".to_owned());
        }
    }
    if out.version.is_empty() {
        return Err("the response carries no version".to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        assert_eq!(&frame(b"")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(&frame(b"ab")[..], &[0, 0, 0, 0, 2, b'a', b'b']);
        assert_eq!(unframe(&frame(b"hello")).unwrap(), b"hello");
        assert!(unframe(&[0, 0, 0]).unwrap_err().contains("shorter"));
        assert!(
            unframe(&[0, 0, 0, 0, 9, 1])
                .unwrap_err()
                .contains("announces 9")
        );
        assert!(
            unframe(&[1, 0, 0, 0, 0])
                .unwrap_err()
                .contains("compressed")
        );
    }

    /// Bytes as containerd 1.6 sends them: field 1 "1.6.20~ds1", field 2 "1.6.20~ds1".
    #[test]
    fn decodes_a_version_response() {
        let mut msg = vec![0x0a, 10];
        msg.extend_from_slice(b"1.6.20~ds1");
        msg.extend_from_slice(&[0x12, 3]);
        msg.extend_from_slice(b"abc");
        assert_eq!(
            decode_version(&msg).unwrap(),
            ContainerdVersion {
                version: "1.6.20~ds1".into(),
                revision: "abc".into()
            }
        );
    }

    #[test]
    fn skips_unknown_fields_of_every_wire_type() {
        let mut msg = vec![0x18, 0x96, 0x01]; // field 3, varint 150
        msg.extend_from_slice(&[0x21, 1, 2, 3, 4, 5, 6, 7, 8]); // field 4, fixed64
        msg.extend_from_slice(&[0x2d, 1, 2, 3, 4]); // field 5, fixed32
        msg.extend_from_slice(&[0x32, 2, b'x', b'y']); // field 6, bytes
        msg.extend_from_slice(&[0x0a, 1, b'2']);
        assert_eq!(decode_version(&msg).unwrap().version, "2");
    }

    #[test]
    fn refuses_broken_messages() {
        assert!(decode_version(&[]).unwrap_err().contains("no version"));
        assert!(
            decode_version(&[0x0a, 5, b'a'])
                .unwrap_err()
                .contains("past the end")
        );
        assert!(
            decode_version(&[0x0a, 0x80])
                .unwrap_err()
                .contains("truncated")
        );
        assert!(
            decode_version(&[0x0a, 1, 0xff])
                .unwrap_err()
                .contains("UTF-8")
        );
        assert!(decode_version(&[0x0b]).unwrap_err().contains("wire type 3"));
        assert!(
            decode_version(&[0x21, 1])
                .unwrap_err()
                .contains("past the end")
        );
    }
}
