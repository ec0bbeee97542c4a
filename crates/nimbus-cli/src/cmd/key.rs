//! `nimbus key create`: a cosign-compatible key pair, made on this machine.
//! The private key never leaves it (`image sign` signs locally).

use std::io::{BufRead, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use nimbus_sign::{KeyPair, ScryptParams};

use crate::ctx::Globals;
use crate::output::print;

/// Where cosign reads a key's password from before it asks.
pub const PASSWORD_ENV: &str = "COSIGN_PASSWORD";

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Create an ECDSA P-256 key pair in cosign's format: PREFIX.key (encrypted
    /// with a password from COSIGN_PASSWORD or asked for) and PREFIX.pub.
    #[command(
        after_help = "Examples:\n  nimbus key create\n  COSIGN_PASSWORD=... nimbus key create --output-key-prefix ops-release\nThe files are those of `cosign generate-key-pair`: either tool reads the other's."
    )]
    Create {
        #[arg(long, default_value = "cosign")]
        output_key_prefix: String,
    },
}

pub async fn run(g: &Globals, cmd: KeyCmd) -> anyhow::Result<()> {
    match cmd {
        KeyCmd::Create { output_key_prefix } => create(g, &output_key_prefix),
    }
}

fn create(g: &Globals, prefix: &str) -> anyhow::Result<()> {
    let key_path = PathBuf::from(format!("{prefix}.key"));
    let pub_path = PathBuf::from(format!("{prefix}.pub"));
    for path in [&key_path, &pub_path] {
        if path.exists() {
            bail!(
                "{} already exists; remove it or choose another --output-key-prefix",
                path.display()
            );
        }
    }
    let password = password(true)?;
    let pair = KeyPair::generate()?;
    let sealed = pair.to_encrypted_pem(password.as_bytes(), ScryptParams::cosign())?;
    let public = pair.public_key();
    write_new(&key_path, sealed.as_bytes(), 0o600)?;
    if let Err(e) = write_new(&pub_path, public.to_pem().as_bytes(), 0o644) {
        let _ = std::fs::remove_file(&key_path);
        return Err(e);
    }
    let shown = serde_json::json!({
        "private_key": key_path,
        "public_key": pub_path,
        "fingerprint": public.fingerprint(),
    });
    print(g, &shown, || {
        format!(
            "private key written to {} (encrypted), public key to {}\nfingerprint {}",
            key_path.display(),
            pub_path.display(),
            public.fingerprint()
        )
    })
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// The key's password: `COSIGN_PASSWORD` when set (even empty, as cosign
/// takes it), else asked on the terminal, twice when `confirm`.
pub fn password(confirm: bool) -> anyhow::Result<zeroize::Zeroizing<String>> {
    if let Ok(p) = std::env::var(PASSWORD_ENV) {
        return Ok(zeroize::Zeroizing::new(p));
    }
    let first = ask_hidden("Enter password for private key: ")?;
    if confirm && *ask_hidden("Enter password for private key again: ")? != *first {
        bail!("the passwords do not match; run the command again");
    }
    Ok(first)
}

/// A line read from the terminal with echo off.
fn ask_hidden(prompt: &str) -> anyhow::Result<zeroize::Zeroizing<String>> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .with_context(|| {
            format!("no terminal to ask for the key's password: set {PASSWORD_ENV}")
        })?;
    let original = nix::sys::termios::tcgetattr(tty.as_fd()).with_context(|| {
        format!("no terminal to ask for the key's password: set {PASSWORD_ENV}")
    })?;
    let mut silent = original.clone();
    silent
        .local_flags
        .remove(nix::sys::termios::LocalFlags::ECHO);
    nix::sys::termios::tcsetattr(tty.as_fd(), nix::sys::termios::SetArg::TCSANOW, &silent)?;
    let mut line = zeroize::Zeroizing::new(String::new());
    let read = (&tty)
        .write_all(prompt.as_bytes())
        .and_then(|()| std::io::BufReader::new(&tty).read_line(&mut line));
    let _ =
        nix::sys::termios::tcsetattr(tty.as_fd(), nix::sys::termios::SetArg::TCSANOW, &original);
    let _ = (&tty).write_all(b"\n");
    read.context("reading the password from the terminal")?;
    let trimmed = line.trim_end_matches(['\r', '\n']).to_string();
    Ok(zeroize::Zeroizing::new(trimmed))
}
