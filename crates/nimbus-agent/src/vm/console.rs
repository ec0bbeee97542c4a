//! The serial console tee: QEMU's stdio socket into the size-capped
//! `console.log` and to the one attached console client, and the client's
//! keystrokes back to the guest.

use std::cell::RefCell;
use std::os::fd::OwnedFd;
use std::rc::Rc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::error::VmError;
use super::shim::VmShim;
use crate::shim::logs::{ConsoleLog, LineSplitter, Stream};

/// Serial console: QEMU's stdio socket into the log and the attached client,
/// and the client's keystrokes back. Returns the output task.
pub(super) fn start_console_pumps(
    shim: &Rc<VmShim>,
    serial: &OwnedFd,
    log: Rc<RefCell<ConsoleLog>>,
    mut input: mpsc::UnboundedReceiver<Vec<u8>>,
) -> Result<tokio::task::JoinHandle<()>, VmError> {
    let fd = serial
        .try_clone()
        .map_err(VmError::SerialConsoleDuplicate)?;
    let std_stream = std::os::unix::net::UnixStream::from(fd);
    std_stream
        .set_nonblocking(true)
        .map_err(VmError::SerialConsoleSocket)?;
    let stream =
        tokio::net::UnixStream::from_std(std_stream).map_err(VmError::SerialConsoleSocket)?;
    let (mut reader, mut writer) = stream.into_split();
    tokio::task::spawn_local(async move {
        while let Some(bytes) = input.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    let shim = shim.clone();
    Ok(tokio::task::spawn_local(async move {
        let mut splitter = LineSplitter::default();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            {
                let mut log = log.borrow_mut();
                // Serial lines end in CRLF; the log keeps lines without the CR.
                splitter.feed(chunk, |line| {
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    log.write_line(Stream::Stdout, line);
                });
            }
            let attached = shim.console_out.borrow().clone();
            if let Some(tx) = attached {
                if tx.try_send(chunk.to_vec()).is_err() {
                    // A client that has gone, or does not read (its queue
                    // is full), is detached rather than allowed to stall the
                    // guest's console or hold it from everyone else.
                    shim.console_out.borrow_mut().take();
                }
            }
        }
        splitter.finish(|line| log.borrow_mut().write_line(Stream::Stdout, line));
    }))
}
