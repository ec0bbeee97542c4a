//! The client side of `nimbus instance exec`: frames over an upgraded
//! connection, with the local terminal in raw mode for `--tty`.

use std::io::{IsTerminal, Read};
use std::os::fd::AsFd;

use nimbus_api::client::Client;
use nimbus_api::exec::{self, ExecRequest};
use tokio::io::AsyncWriteExt;

/// Restores the terminal's mode when dropped.
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enable() -> RawMode {
        let stdin = std::io::stdin();
        let Ok(original) = nix::sys::termios::tcgetattr(stdin.as_fd()) else {
            return RawMode(None);
        };
        let mut raw = original.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        if nix::sys::termios::tcsetattr(stdin.as_fd(), nix::sys::termios::SetArg::TCSANOW, &raw)
            .is_err()
        {
            return RawMode(None);
        }
        RawMode(Some(original))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin().as_fd(),
                nix::sys::termios::SetArg::TCSANOW,
                t,
            );
        }
    }
}

/// The size of the terminal on stdin (the one the session was asked for with),
/// else on stdout.
fn terminal_size() -> Option<(u16, u16)> {
    [0, 1].into_iter().find_map(|fd| {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes a winsize into the struct we pass, which
        // lives across the call; fds 0 and 1 are this process's own.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
        (rc == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
    })
}

/// What the client sends to the exec'd process.
enum Input {
    Data(Vec<u8>),
    Eof,
    Resize(u16, u16),
}

pub async fn exec(
    client: &Client,
    instance_path: &str,
    args: Vec<String>,
    env: Vec<String>,
    cwd: Option<String>,
    tty: bool,
    interactive: bool,
) -> anyhow::Result<i32> {
    let tty = tty && std::io::stdin().is_terminal();
    // Listening before the size is read, so no change is missed in between.
    let window_changes = if tty {
        Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
                .map_err(|e| anyhow::anyhow!("cannot watch the terminal for resizes: {e}"))?,
        )
    } else {
        None
    };
    let size = if tty { terminal_size() } else { None };
    let req = ExecRequest {
        args,
        env,
        cwd,
        tty,
        rows: size.map(|s| s.0),
        cols: size.map(|s| s.1),
    };
    let stream = client
        .upgrade(&format!("{instance_path}/exec"), &req)
        .await?;
    let (mut reader, mut writer) = tokio::io::split(stream);
    let _raw = if tty { Some(RawMode::enable()) } else { None };

    let (input_tx, mut input_rx) = tokio::sync::mpsc::channel::<Input>(8);
    if let Some(mut window_changes) = window_changes {
        let resize_tx = input_tx.clone();
        tokio::spawn(async move {
            // The size now, in case it changed since the request was made; then
            // every change, so full-screen programs redraw to fit.
            let mut last = None;
            loop {
                if let Some((rows, cols)) = terminal_size() {
                    if last != Some((rows, cols)) {
                        last = Some((rows, cols));
                        if resize_tx.send(Input::Resize(rows, cols)).await.is_err() {
                            return;
                        }
                    }
                }
                if window_changes.recv().await.is_none() {
                    return;
                }
            }
        });
    }
    if interactive {
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin();
            let mut buf = [0u8; 8192];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = input_tx.blocking_send(Input::Eof);
                        return;
                    }
                    Ok(n) => {
                        if input_tx
                            .blocking_send(Input::Data(buf[..n].to_vec()))
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
    } else {
        let _ = input_tx.send(Input::Eof).await;
    }
    let writer_task = tokio::spawn(async move {
        while let Some(item) = input_rx.recv().await {
            let result = match item {
                Input::Data(data) => exec::write_frame(&mut writer, exec::STDIN, &data).await,
                Input::Eof => exec::write_frame(&mut writer, exec::STDIN_EOF, &[]).await,
                Input::Resize(rows, cols) => {
                    let size = exec::encode_resize(rows, cols);
                    exec::write_frame(&mut writer, exec::RESIZE, &size).await
                }
            };
            if result.is_err() {
                break;
            }
        }
        let _ = writer.flush().await;
        // Keep the write half open: closing it could end the session early.
        std::future::pending::<()>().await;
    });
    let mut code = None;
    while let Some((kind, payload)) = exec::read_frame(&mut reader).await? {
        match kind {
            exec::STDOUT => {
                crate::output::stdout_bytes(&payload)?;
            }
            exec::STDERR => {
                crate::output::stderr_bytes(&payload)?;
            }
            exec::EXIT if payload.len() == 4 => {
                code = Some(i32::from_be_bytes([
                    payload[0], payload[1], payload[2], payload[3],
                ]));
                break;
            }
            _ => {}
        }
    }
    writer_task.abort();
    code.ok_or_else(|| {
        anyhow::anyhow!(
            "the exec session ended without an exit status; is the instance still running?"
        )
    })
}

/// Ctrl-]: the key that detaches from a console, as in telnet and virsh.
const DETACH_KEY: u8 = 0x1d;

/// `nimbus instance console`: the VM's serial port on this terminal, raw,
/// until Ctrl-] or the VM ends. Returns the exit code to leave with.
pub async fn console(client: &Client, instance_path: &str, name: &str) -> anyhow::Result<i32> {
    let stream = client
        .upgrade(&format!("{instance_path}/console"), &serde_json::json!({}))
        .await?;
    let (mut reader, mut writer) = tokio::io::split(stream);
    let interactive = std::io::stdin().is_terminal();
    eprintln!(
        "Connected to the serial console of {name:?}; detach with Ctrl-] (the VM keeps running).\r"
    );
    let _raw = if interactive {
        Some(RawMode::enable())
    } else {
        None
    };
    let (stdin_tx, mut stdin_rx) = tokio::sync::mpsc::channel::<Option<Vec<u8>>>(8);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 4096];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = stdin_tx.blocking_send(None);
                    return;
                }
                Ok(n) => {
                    if stdin_tx.blocking_send(Some(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut stdin_open = true;
    loop {
        tokio::select! {
            input = stdin_rx.recv(), if stdin_open => match input {
                Some(Some(data)) => {
                    if let Some(pos) = data.iter().position(|&b| b == DETACH_KEY) {
                        if pos > 0 {
                            exec::write_frame(&mut writer, exec::STDIN, &data[..pos]).await?;
                        }
                        eprintln!("\r\nDetached from {name:?}; it keeps running.\r");
                        return Ok(0);
                    }
                    exec::write_frame(&mut writer, exec::STDIN, &data).await?;
                }
                // End of non-interactive input: keep showing output until the VM ends.
                Some(None) | None => stdin_open = false,
            },
            frame = exec::read_frame(&mut reader) => match frame? {
                Some((exec::STDOUT, payload)) => {
                    crate::output::stdout_bytes(&payload)?;
                }
                Some((exec::EXIT, payload)) if payload.len() == 4 => {
                    let code = i32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                    eprintln!("\r\nThe VM {name:?} has ended (exit code {code}).\r");
                    return Ok(code);
                }
                Some(_) => {}
                None => {
                    eprintln!("\r\nThe console connection closed.\r");
                    return Ok(0);
                }
            },
        }
    }
}
