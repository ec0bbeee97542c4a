//! Which accelerator this host really has.
//!
//! `/dev/kvm` existing proves little: on some hosts (a paravirtual KVM inside
//! a cloud VM) it creates VMs that cannot run an ordinary kernel. So the
//! agent boots a probe guest under KVM with exactly the CPU flags VMs would
//! get (`-accel kvm -cpu host`) and a short timeout: a 64 KiB firmware image
//! (source in `probe/probe.S`) that goes from real mode through protected
//! mode and paging into long mode, loops over CPUID and CR3 writes, and
//! reports 42 on the debug-exit port (QEMU exits with (42 << 1) | 1 = 85).
//! Anything else, and TCG is used, with the reason in words. The result is
//! cached for the agent's lifetime.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::spec::Accelerator;

/// How long KVM gets to run the probe (it takes milliseconds when it works).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// QEMU's exit status when the probe wrote 42 to the debug-exit port.
const PROBE_OK_STATUS: i32 = (42 << 1) | 1;

/// The probe's code from offset 0 of the firmware image (assembled from
/// `probe/probe.S` with `as --32` and `ld -Ttext=0 --oformat binary`).
const PROBE_CODE: &[u8] = &[
    0xfa, 0x31, 0xc0, 0x8e, 0xd8, 0x2e, 0x66, 0x0f, 0x01, 0x16, 0x08, 0x01, 0x0f, 0x20, 0xc0, 0x66,
    0x83, 0xc8, 0x01, 0x0f, 0x22, 0xc0, 0x66, 0xea, 0x1e, 0x00, 0xff, 0xff, 0x08, 0x00, 0x66, 0xb8,
    0x10, 0x00, 0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xd0, 0xbf, 0x00, 0x10, 0x00, 0x00, 0x31, 0xc0, 0xb9,
    0x00, 0x0c, 0x00, 0x00, 0xf3, 0xab, 0xc7, 0x05, 0x00, 0x10, 0x00, 0x00, 0x03, 0x20, 0x00, 0x00,
    0xc7, 0x05, 0x00, 0x20, 0x00, 0x00, 0x03, 0x30, 0x00, 0x00, 0xc7, 0x05, 0x00, 0x30, 0x00, 0x00,
    0x83, 0x00, 0x00, 0x00, 0xbe, 0x6c, 0x00, 0xff, 0xff, 0xbf, 0x00, 0x50, 0x00, 0x00, 0xb9, 0x7a,
    0x00, 0x00, 0x00, 0xf3, 0xa4, 0xea, 0x00, 0x50, 0x00, 0x00, 0x08, 0x00, 0x0f, 0x01, 0x15, 0x74,
    0x50, 0x00, 0x00, 0x0f, 0x20, 0xe0, 0x83, 0xc8, 0x20, 0x0f, 0x22, 0xe0, 0xb8, 0x00, 0x10, 0x00,
    0x00, 0x0f, 0x22, 0xd8, 0xb9, 0x80, 0x00, 0x00, 0xc0, 0x0f, 0x32, 0x0d, 0x00, 0x01, 0x00, 0x00,
    0x0f, 0x30, 0x0f, 0x20, 0xc0, 0x0d, 0x00, 0x00, 0x00, 0x80, 0x0f, 0x22, 0xc0, 0xea, 0x38, 0x50,
    0x00, 0x00, 0x18, 0x00, 0xbe, 0x20, 0x4e, 0x00, 0x00, 0x0f, 0x20, 0xd8, 0x0f, 0x22, 0xd8, 0x31,
    0xc0, 0x0f, 0xa2, 0xff, 0xce, 0x75, 0xf2, 0xb0, 0x2a, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd, 0x66, 0x90,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x9a, 0xcf, 0x00,
    0xff, 0xff, 0x00, 0x00, 0x00, 0x92, 0xcf, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x9a, 0xaf, 0x00,
    0x1f, 0x00, 0x54, 0x50, 0x00, 0x00, 0x66, 0x90, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0x00, 0x00, 0x00, 0x9a, 0xcf, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x92, 0xcf, 0x00,
    0xff, 0xff, 0x00, 0x00, 0x00, 0x9a, 0xaf, 0x00, 0x1f, 0x00, 0xe8, 0x00, 0xff, 0xff,
];
/// The reset vector at offset 0xfff0: a near jump to offset 0.
const PROBE_RESET: &[u8] = &[0xe9, 0x0d, 0x00];
const PROBE_IMAGE_BYTES: usize = 64 << 10;

/// Why KVM could not run the probe guest; the words go into the TCG
/// fallback's reason.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot run qemu-system-x86_64: {0}")]
    QemuNotRunnable(#[source] std::io::Error),
    #[error("the probe did not finish within {} s", .0.as_secs())]
    Timeout(Duration),
    #[error("waiting for QEMU: {0}")]
    Wait(#[source] std::io::Error),
    /// QEMU ended without the probe's status; `message` is the first line
    /// of its stderr that is not a warning, if any.
    #[error("QEMU ended with {status}{}", if .message.is_empty() { String::new() } else { format!(": {}", .message) })]
    Failed {
        status: std::process::ExitStatus,
        message: String,
    },
}

/// The probe firmware image.
pub fn probe_image() -> Vec<u8> {
    let mut image = vec![0u8; PROBE_IMAGE_BYTES];
    image[..PROBE_CODE.len()].copy_from_slice(PROBE_CODE);
    image[0xfff0..0xfff0 + PROBE_RESET.len()].copy_from_slice(PROBE_RESET);
    image
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub accelerator: Accelerator,
    pub reason: String,
}

/// Decides the accelerator; `work_dir` gets the probe image. Blocking.
pub fn probe(work_dir: &Path) -> ProbeResult {
    let tcg = |reason: String| ProbeResult {
        accelerator: Accelerator::Tcg,
        reason,
    };
    match std::env::var("NIMBUS_VM_ACCEL").as_deref() {
        Ok("tcg") => return tcg("TCG chosen by NIMBUS_VM_ACCEL=tcg".into()),
        Ok("kvm") => {
            return ProbeResult {
                accelerator: Accelerator::Kvm,
                reason: "KVM chosen by NIMBUS_VM_ACCEL=kvm (not probed)".into(),
            }
        }
        _ => {}
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return tcg(format!(
            "/dev/kvm cannot be opened ({e}): no KVM on this host, so guests run under TCG emulation"
        ));
    }
    let image = work_dir.join("kvm-probe.bin");
    if let Err(e) = std::fs::write(&image, probe_image()) {
        return tcg(format!(
            "could not write the KVM probe guest to {} ({e}); using TCG",
            image.display()
        ));
    }
    let started = Instant::now();
    let outcome = run_probe(&image);
    let _ = std::fs::remove_file(&image);
    match outcome {
        Ok(()) => ProbeResult {
            accelerator: Accelerator::Kvm,
            reason: format!(
                "KVM ran the probe guest (long mode, paging, CPUID) with -cpu host in {} ms",
                started.elapsed().as_millis()
            ),
        },
        Err(why) => tcg(format!(
            "/dev/kvm exists but KVM could not run the probe guest with -cpu host ({why}); guests run under TCG emulation"
        )),
    }
}

fn run_probe(image: &Path) -> Result<(), ProbeError> {
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm,x-option-roms=off,rtc=off,pit=off,pic=off,isa-serial=off",
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-m",
            "16",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-bios",
        ])
        .arg(image)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(ProbeError::QemuNotRunnable)?;
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ProbeError::Timeout(PROBE_TIMEOUT));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(ProbeError::Wait(e)),
        }
    };
    if status.code() == Some(PROBE_OK_STATUS) {
        return Ok(());
    }
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        use std::io::Read;
        let _ = err.read_to_string(&mut stderr);
    }
    let message = stderr
        .lines()
        .filter(|l| !l.contains("warning:"))
        .map(|l| l.trim_start_matches("qemu-system-x86_64: "))
        .next()
        .unwrap_or("")
        .to_string();
    Err(ProbeError::Failed { status, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_image_has_code_at_zero_and_a_reset_vector() {
        let img = probe_image();
        assert_eq!(img.len(), 65536);
        assert_eq!(img[0], 0xfa, "starts with cli");
        assert_eq!(&img[0xfff0..0xfff3], PROBE_RESET);
    }

    #[test]
    fn a_failed_probe_says_how_qemu_ended_and_why() {
        use std::os::unix::process::ExitStatusExt;
        let status = std::process::ExitStatus::from_raw(1 << 8);
        let failed = |message: &str| ProbeError::Failed {
            status,
            message: message.to_string(),
        };
        assert_eq!(
            failed("failed to initialize kvm: Permission denied").to_string(),
            "QEMU ended with exit status: 1: failed to initialize kvm: Permission denied"
        );
        assert_eq!(failed("").to_string(), "QEMU ended with exit status: 1");
        assert_eq!(
            ProbeError::Timeout(PROBE_TIMEOUT).to_string(),
            "the probe did not finish within 5 s"
        );
    }
}
