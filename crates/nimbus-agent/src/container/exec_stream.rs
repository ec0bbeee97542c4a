//! Bridges an exec'd process and its client connection with the framed protocol.

use std::rc::Rc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::WaitStatus;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::exec::spawn_exec;
use super::pipes::AsyncPipe;
use super::shim::Shim;
use crate::shim::control::{encode_frame, frame, read_frame_async, ExecRequest, ShimResponse};
use crate::shim::server::write_response;

/// After the process exits, output still held open by its background children is
/// forwarded for at most this long before the exit frame is sent.
const OUTPUT_DRAIN: Duration = Duration::from_secs(1);

pub(super) async fn run(
    shim: Rc<Shim>,
    mut reader: BufReader<OwnedReadHalf>,
    mut writer: OwnedWriteHalf,
    req: ExecRequest,
) {
    let _trim = TrimWhenDone(shim.clone());
    let refuse = |message: String| ShimResponse::Error { message };
    let Some(init_pid) = shim.init_pid() else {
        let phase = shim.state().phase;
        let message = format!(
            "instance {} is not running (phase {phase:?})",
            shim.spec.instance_id
        );
        let _ = write_response(&mut writer, &refuse(message)).await;
        return;
    };
    let child = match spawn_exec(&shim.exec_ctx, init_pid, &req) {
        Ok(child) => child,
        Err(e) => {
            let _ = write_response(&mut writer, &refuse(e.to_string())).await;
            return;
        }
    };
    let pid = child.pid;
    let mut exit = shim.reaper.watch(pid);
    let pipes = (
        AsyncPipe::new(child.stdin),
        AsyncPipe::new(child.stdout),
        child.stderr.map(AsyncPipe::new).transpose(),
    );
    let (stdin, stdout, stderr) = match pipes {
        (Ok(i), Ok(o), Ok(e)) => (i, o, e),
        _ => {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = write_response(&mut writer, &refuse("cannot watch exec pipes".into())).await;
            return;
        }
    };
    if write_response(
        &mut writer,
        &ShimResponse::ExecStarted { pid: pid.as_raw() },
    )
    .await
    .is_err()
    {
        let _ = kill(pid, Signal::SIGKILL);
        return;
    }

    let tty = child.tty;
    // Input runs in its own task: reading a frame is not cancel-safe, so it must not
    // sit in the select below.
    let mut input = tokio::task::spawn_local(async move {
        let mut stdin = Some(stdin);
        while let Ok(Some((kind, payload))) = read_frame_async(&mut reader).await {
            match (kind, &stdin) {
                (frame::STDIN, Some(pipe)) if pipe.write_all(&payload).await.is_err() => {
                    stdin = None;
                }
                (frame::STDIN_EOF, Some(pipe)) => {
                    if tty {
                        // A terminal has no end of input; ^D is what a user would type.
                        let _ = pipe.write_all(&[4]).await;
                    } else {
                        stdin = None;
                    }
                }
                (frame::RESIZE, Some(pipe)) if tty => {
                    if let Some((rows, cols)) = nimbus_api::exec::decode_resize(&payload) {
                        resize(pipe.raw_fd(), rows, cols);
                    }
                }
                _ => {}
            }
        }
    });

    let mut out_buf = vec![0u8; 16 * 1024];
    let mut err_buf = vec![0u8; 4096];
    let mut out_open = true;
    let mut err_open = stderr.is_some();
    let mut code: Option<i32> = None;
    let mut drain_until: Option<tokio::time::Instant> = None;
    let mut client_gone = false;
    while !(code.is_some() && !out_open && !err_open) {
        let (kind, n) = tokio::select! {
            r = stdout.read(&mut out_buf), if out_open => match r {
                Ok(n @ 1..) => (frame::STDOUT, n),
                _ => { out_open = false; continue }
            },
            r = read_opt(&stderr, &mut err_buf), if err_open => match r {
                Ok(n @ 1..) => (frame::STDERR, n),
                _ => { err_open = false; continue }
            },
            status = &mut exit, if code.is_none() => {
                code = Some(match status {
                    Ok(WaitStatus::Exited(_, c)) => c,
                    Ok(WaitStatus::Signaled(_, sig, _)) => 128 + sig as i32,
                    _ => 255,
                });
                drain_until = Some(tokio::time::Instant::now() + OUTPUT_DRAIN);
                continue;
            },
            _ = sleep_until_opt(drain_until) => break,
        };
        let buf = if kind == frame::STDOUT {
            &out_buf[..n]
        } else {
            &err_buf[..n]
        };
        if writer.write_all(&encode_frame(kind, buf)).await.is_err() {
            client_gone = true;
            break;
        }
    }
    if client_gone {
        input.abort();
        // Nobody can see the output any more; do not leave the process behind (once
        // reaped, its pid may belong to someone else).
        if code.is_none() && exit.try_recv().is_err() {
            let _ = kill(pid, Signal::SIGKILL);
        }
        return;
    }
    let code = match code {
        Some(c) => c,
        None => match exit.await {
            Ok(WaitStatus::Exited(_, c)) => c,
            Ok(WaitStatus::Signaled(_, sig, _)) => 128 + sig as i32,
            _ => 255,
        },
    };
    let _ = writer
        .write_all(&encode_frame(frame::EXIT, &code.to_be_bytes()))
        .await;
    let _ = writer.shutdown().await;
    // Keep reading (and dropping) input until the client closes: closing a
    // Unix socket with unread input resets it, and a relay in between could
    // then lose the exit frame.
    let _ = tokio::time::timeout(INPUT_LINGER, &mut input).await;
    input.abort();
}

/// Asks the supervisor to trim its working set once this exec is over,
/// however it ended.
struct TrimWhenDone(Rc<Shim>);

impl Drop for TrimWhenDone {
    fn drop(&mut self) {
        self.0.exec_finished.notify_one();
    }
}

/// How long the shim waits for the client to hang up after the exit frame.
const INPUT_LINGER: Duration = Duration::from_secs(2);

async fn read_opt(pipe: &Option<AsyncPipe>, buf: &mut [u8]) -> std::io::Result<usize> {
    match pipe {
        Some(p) => p.read(buf).await,
        None => Ok(0),
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Sets the terminal's size; the kernel then sends SIGWINCH to its foreground
/// process group, which is how the process learns of it.
fn resize(fd: i32, rows: u16, cols: u16) {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize that lives across the call; fd is the pty master.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &size) } < 0 {
        tracing::debug!(
            rows,
            cols,
            error = %std::io::Error::last_os_error(),
            "exec terminal resize failed"
        );
    }
}
