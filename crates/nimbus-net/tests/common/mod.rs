//! Helpers shared by the dataplane tests: ids, the loud skip, and a TCP
//! listener and client inside a namespace.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use nimbus_net::netns;

/// A fresh id whose leading hex digits (used in link names) differ per call.
pub fn unique_id() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut h: u64 = 0xcbf29ce484222325;
    for b in nanos
        .to_le_bytes()
        .iter()
        .chain(n.to_le_bytes().iter())
        .chain(std::process::id().to_le_bytes().iter())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}{nanos:016x}")
}

/// Set by `scripts/test`, which runs as root after `scripts/deps`: there a
/// check that would skip fails instead.
pub const NO_SKIP_ENV: &str = "NIMBUS_TESTS_REQUIRE_ROOT";

/// Reports that (part of) the current test did not run: a failure under
/// `scripts/test` ([`NO_SKIP_ENV`]), elsewhere a SKIPPED line written
/// straight to the stderr handle, which the harness does not capture (it
/// captures `print!`/`eprint!` only), so it shows in `cargo test`'s output.
pub fn skip(why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string();
    if std::env::var_os(NO_SKIP_ENV).is_some() {
        panic!("{test} would skip ({why}), but {NO_SKIP_ENV} is set: under scripts/test every check must run");
    }
    let _ = writeln!(std::io::stderr(), "\n!!!!!!!! SKIPPED {test}: {why}\n");
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A listener inside `ns` that answers "pong" to each connection.
pub fn serve(ns: &Path, port: u16) -> SocketAddr {
    let listener = netns::run_in(Some(ns), move || {
        TcpListener::bind(("0.0.0.0", port)).map_err(|e| nimbus_net::NetError::io("bind", e))
    })
    .expect("listener in namespace");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let _ = s.write_all(b"pong");
        }
    });
    addr
}

/// Connect from inside `ns`, optionally from a given source address.
pub fn talk(ns: &Path, to: Ipv4Addr, port: u16) -> bool {
    netns::run_in(Some(ns), move || {
        let r =
            TcpStream::connect_timeout(&SocketAddr::from((to, port)), Duration::from_millis(800))
                .and_then(|mut s| {
                    s.set_read_timeout(Some(Duration::from_secs(2)))?;
                    let mut buf = [0u8; 4];
                    s.read_exact(&mut buf)?;
                    Ok(buf)
                });
        Ok(matches!(r, Ok(b) if &b == b"pong"))
    })
    .unwrap_or(false)
}

/// A listener inside `ns` that reads each connection to its end and
/// answers `<tag>:<bytes read>`.
pub fn serve_tagged(ns: &Path, port: u16, tag: &'static str) {
    let listener = netns::run_in(Some(ns), move || {
        TcpListener::bind(("0.0.0.0", port)).map_err(|e| nimbus_net::NetError::io("bind", e))
    })
    .expect("listener in namespace");
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let mut sink = Vec::new();
            if s.read_to_end(&mut sink).is_ok() {
                let _ = s.write_all(format!("{tag}:{}", sink.len()).as_bytes());
            }
        }
    });
}

/// From inside `ns`, send `bytes` bytes to `to:port`, close the sending
/// side and return the answer (`None`: no connection or no answer).
pub fn exchange(ns: &Path, to: Ipv4Addr, port: u16, bytes: usize) -> Option<String> {
    netns::run_in(Some(ns), move || {
        let r = (|| -> std::io::Result<String> {
            let mut s =
                TcpStream::connect_timeout(&SocketAddr::from((to, port)), Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.set_write_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(&vec![0x5a; bytes])?;
            s.shutdown(std::net::Shutdown::Write)?;
            let mut answer = String::new();
            s.read_to_string(&mut answer)?;
            Ok(answer)
        })();
        Ok(r.ok())
    })
    .ok()
    .flatten()
}
