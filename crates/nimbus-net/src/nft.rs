//! Feeding scripts to `nft -f -`, in the host namespace or inside a
//! router namespace. One call is one kernel transaction.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::{netns, NetError, Result};

/// The `nft` binary (Debian package `nftables`).
pub const NFT: &str = "nft";

/// Apply `script` in the namespace at `netns_path` (`None`: the host's).
pub fn apply(netns_path: Option<&Path>, script: &str) -> Result<()> {
    let mut cmd = Command::new(NFT);
    cmd.args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let ns = match netns_path {
        Some(p) => Some(netns::open(p)?),
        None => None,
    };
    if let Some(ns) = &ns {
        let fd = ns.as_raw_fd();
        // SAFETY: only the async-signal-safe setns syscall runs between fork
        // and exec; the fd stays open in the parent until the child is waited.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().map_err(|e| {
        NetError::io(
            "run `nft` (install the nftables package: apt-get install nftables)",
            e,
        )
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| NetError::io("write the nft script", e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NetError::io("wait for nft", e))?;
    drop(ns);
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Nft(format!(
            "the ruleset was rejected: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Delete a table if it exists (host namespace).
pub fn delete_table(family: &str, table: &str) -> Result<()> {
    apply(
        None,
        &format!("table {family} {table}\ndelete table {family} {table}\n"),
    )
}
