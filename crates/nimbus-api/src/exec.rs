//! The framed byte stream of `exec` sessions, spoken between the CLI, the
//! server (which only relays it) and the instance shim.
//!
//! A frame is `[kind u8][len u32 big-endian][payload]`.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// client → shim: bytes for the process's stdin.
pub const STDIN: u8 = 0;
/// shim → client: bytes the process wrote to stdout (or the terminal).
pub const STDOUT: u8 = 1;
/// shim → client: bytes the process wrote to stderr.
pub const STDERR: u8 = 2;
/// shim → client, last frame: the exit code as i32 BE (128+n if killed by signal n).
pub const EXIT: u8 = 3;
/// client → shim: terminal size, rows u16 BE then cols u16 BE (see
/// [`encode_resize`]). Sent at the start of a `tty` session and whenever the
/// client's terminal changes size; the shim sets it on the terminal, and the
/// kernel signals the process (SIGWINCH).
pub const RESIZE: u8 = 4;
/// client → shim: no more stdin.
pub const STDIN_EOF: u8 = 5;

/// Frames larger than this are a protocol error.
pub const MAX_FRAME: u32 = 1 << 20;

/// What the client asks for; sent as the request body of the exec call.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct ExecRequest {
    pub args: Vec<String>,
    /// `KEY=value` entries added to (or replacing) the instance's environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory; the instance's working dir if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default)]
    pub tty: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<u16>,
}

/// The payload of a [`RESIZE`] frame.
pub fn encode_resize(rows: u16, cols: u16) -> [u8; 4] {
    let [r0, r1] = rows.to_be_bytes();
    let [c0, c1] = cols.to_be_bytes();
    [r0, r1, c0, c1]
}

/// `(rows, cols)` from a [`RESIZE`] payload; `None` if it is malformed or
/// either side is zero (a terminal of no size is a client bug, not a size).
pub fn decode_resize(payload: &[u8]) -> Option<(u16, u16)> {
    let [r0, r1, c0, c1] = <[u8; 4]>::try_from(payload).ok()?;
    let (rows, cols) = (u16::from_be_bytes([r0, r1]), u16::from_be_bytes([c0, c1]));
    (rows > 0 && cols > 0).then_some((rows, cols))
}

pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut header = [0u8; 5];
    header[0] = kind;
    header[1..].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    w.write_all(&header).await?;
    w.write_all(payload).await?;
    w.flush().await
}

/// Read one frame; `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut header = [0u8; 5];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("exec frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"),
        ));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await?;
    Ok(Some((header[0], payload)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_payload_round_trips() {
        assert_eq!(encode_resize(50, 132), [0, 50, 0, 132]);
        assert_eq!(decode_resize(&encode_resize(50, 132)), Some((50, 132)));
        assert_eq!(decode_resize(&encode_resize(300, 1000)), Some((300, 1000)));
    }

    #[test]
    fn malformed_or_empty_sizes_are_ignored() {
        assert_eq!(decode_resize(&[0, 50, 0]), None);
        assert_eq!(decode_resize(&[0, 50, 0, 132, 0]), None);
        assert_eq!(decode_resize(&encode_resize(0, 80)), None);
        assert_eq!(decode_resize(&encode_resize(24, 0)), None);
    }
}
