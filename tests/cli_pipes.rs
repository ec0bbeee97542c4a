//! The client and its pipes: a reader of its output that goes away ends it
//! quietly, and an upload the server refuses part-way shows the server's
//! answer instead of the client dying silently of SIGPIPE.

mod common;

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use common::Cloud;

/// The status the client ends with when its stdout was closed (128 + SIGPIPE).
const STDOUT_CLOSED_STATUS: i32 = 141;

/// Runs `nimbus args` with stdout a pipe whose reading end is already
/// closed, so its first write fails with EPIPE whatever the output's size.
fn run_with_closed_stdout(cloud: &Cloud, args: &[&str]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    cloud
        .command()
        .args(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run nimbus")
}

#[test]
fn closed_stdout_ends_the_client_quietly() {
    if !common::is_root("nimbus up") {
        return;
    }
    let cloud = Cloud::start();
    for args in [
        &["instance", "list"][..],
        &["instance", "list", "-o", "json"],
        &["project", "list"],
        &["completions", "bash"],
    ] {
        let out = run_with_closed_stdout(&cloud, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(STDOUT_CLOSED_STATUS),
            "nimbus {args:?} with a closed stdout ended with {} (signal {:?}); stderr: {stderr}",
            out.status,
            out.status.signal()
        );
        assert!(
            stderr.trim().is_empty(),
            "nimbus {args:?} with a closed stdout printed to stderr: {stderr}"
        );
    }
}

#[test]
fn head_of_a_long_output_is_quiet() {
    // Far more than a pipe holds, so the client is still writing when
    // `head` exits.
    let script = format!(
        "set -o pipefail; {nimbus} completions bash | head -1; echo \"status=$?\" >&2",
        nimbus = common::NIMBUS
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout.lines().count(), 1, "head -1 printed: {stdout}");
    assert_eq!(
        stderr.trim(),
        format!("status={STDOUT_CLOSED_STATUS}"),
        "the pipeline printed noise or another status"
    );
}

#[test]
fn an_upload_refused_part_way_shows_the_servers_answer() {
    if !common::is_root("nimbus up") {
        return;
    }
    // Past 8 MiB the server stops reading and answers at once, while the
    // client still has most of the file to send: before the fix the client
    // often died of SIGPIPE on its next write, silently (status 141).
    let cloud = Cloud::start_with(&["--max-image-size", "8MiB"]);
    // Not an archive either. Sparse: 512 MiB that take no disk.
    let file = tempfile::NamedTempFile::new_in("/var/tmp").expect("temp file");
    file.as_file()
        .write_all(b"this is not a tar archive, nor gzip, nor an OCI layout\n")
        .expect("write");
    file.as_file().set_len(512 << 20).expect("grow the file");
    // The failure was a race: a few tries make it show.
    for attempt in 1..=3 {
        let out = cloud.nimbus(&[
            "image",
            "import",
            &file.path().to_string_lossy(),
            "--name",
            "refused",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "attempt {attempt}: a refused upload ended with {} (signal {:?}) instead of an error; stderr: {stderr}",
            out.status,
            out.status.signal()
        );
        assert!(
            stderr.contains("image \"refused\" was not imported"),
            "attempt {attempt}: the server's answer is not shown: {stderr}"
        );
    }
    let refused = cloud.nimbus(&["image", "get", "refused"]);
    assert!(
        !refused.status.success(),
        "the refused image was stored: {}",
        String::from_utf8_lossy(&refused.stdout)
    );
}
