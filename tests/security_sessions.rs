//! Security of long-lived sessions and of the API's shared resources:
//! exec, watch and followed logs end with their token or role (and input
//! typed after that never reaches the instance); one token cannot exhaust
//! the API; unauthenticated callers cannot fill the audit log; tokens
//! cannot outlive their makers or survive their user; agents' deletions
//! are audited.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::{http, wait_until, Cloud};
use serde_json::{json, Value};

const EXEC_STDIN: u8 = 0;

fn token_for(cloud: &Cloud, user: &str) -> (String, String) {
    let v = cloud
        .json(&["token", "create", "--user", user])
        .expect("token create");
    (
        v["secret"].as_str().expect("secret").to_string(),
        v["token"]["metadata"]["name"]
            .as_str()
            .expect("token id")
            .to_string(),
    )
}

fn connect(cloud: &Cloud) -> UnixStream {
    UnixStream::connect(cloud.data_dir().join("api.sock")).expect("connect api.sock")
}

/// Read an HTTP response head byte by byte (so nothing after it is
/// consumed): the status and the header lines.
fn read_head(s: &mut impl Read) -> (u16, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!(
                "the response head ended early ({other:?}): {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    (status, text)
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// An exec session opened through the API's upgrade, as `nimbus instance
/// exec -i` does. A thread reads frames until the server ends the stream.
struct ExecSession {
    stream: UnixStream,
    ended: mpsc::Receiver<()>,
}

impl ExecSession {
    fn open(cloud: &Cloud, token: &str, instance: &str, args: &[&str]) -> ExecSession {
        let mut s = connect(cloud);
        let body = serde_json::to_vec(&json!({"args": args})).expect("exec body");
        write!(
            s,
            "POST /v1/projects/default/instances/{instance}/exec HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: upgrade\r\nUpgrade: nimbus-exec\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .expect("write exec request");
        s.write_all(&body).expect("write exec body");
        let (status, head) = read_head(&mut s);
        assert_eq!(status, 101, "exec must upgrade: {head}");
        let mut reader = s.try_clone().expect("clone the exec stream");
        let (tx, ended) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
            let _ = tx.send(());
        });
        ExecSession { stream: s, ended }
    }

    /// Send `line` to the process's stdin; errors are returned, not fatal
    /// (after revocation the server may have closed the connection).
    fn type_line(&mut self, line: &str) -> std::io::Result<()> {
        let payload = format!("{line}\n");
        let mut frame = vec![EXEC_STDIN];
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(payload.as_bytes());
        self.stream.write_all(&frame)
    }

    /// Whether the server ended the session within `timeout`.
    fn ends_within(&self, timeout: Duration) -> bool {
        self.ended.recv_timeout(timeout).is_ok()
    }
}

/// Whether `path` exists in the instance, asked through an admin exec.
fn exists_in(cloud: &Cloud, instance: &str, path: &str) -> bool {
    let out = cloud.nimbus(&["instance", "exec", instance, "--", "test", "-e", path]);
    out.status.code() == Some(0)
}

/// Open a streaming GET as `token` and check it answers 200; the thread
/// returns true when the server ends the stream within 30 s.
fn open_stream(cloud: &Cloud, token: &str, path: &str) -> std::thread::JoinHandle<bool> {
    let mut s = connect(cloud);
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .expect("write stream request");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    assert!(line.contains(" 200 "), "{path} must open: {line}");
    let deadline = Instant::now() + Duration::from_secs(30);
    std::thread::spawn(move || loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) => return true,
            Ok(_) if Instant::now() < deadline => continue,
            _ => return false,
        }
    })
}

fn run_sleeper(cloud: &Cloud, name: &str) {
    cloud.ok(&[
        "instance", "run", name, "--image", "busybox", "--", "sleep", "600",
    ]);
    cloud.wait_phase(name, &["running"], Duration::from_secs(30));
}

/// The session works while allowed: a line typed creates a file.
fn assert_session_works(cloud: &Cloud, session: &mut ExecSession, instance: &str, file: &str) {
    session
        .type_line(&format!("touch {file}"))
        .expect("type while allowed");
    wait_until(Duration::from_secs(15), "input to reach the shell", || {
        exists_in(cloud, instance, file).then_some(())
    });
}

/// Lines typed after the session ended must never run: give them the
/// usual latency of a command many times over, and check each time.
fn assert_input_dropped(cloud: &Cloud, session: &mut ExecSession, instance: &str, file: &str) {
    let _ = session.type_line(&format!("touch {file}"));
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        assert!(
            !exists_in(cloud, instance, file),
            "input typed after revocation reached the container ({file} exists)"
        );
    }
}

#[test]
fn exec_ends_and_drops_input_when_the_role_drops_or_the_token_goes() {
    let cloud = Cloud::start();
    cloud.ok(&["user", "create", "mel"]);
    cloud.ok(&["role", "grant", "mel", "member", "--project", "default"]);
    let (mel, mel_id) = token_for(&cloud, "mel");
    run_sleeper(&cloud, "shell");

    // Member drops to reader: the session (which needs member) ends, and
    // what is typed afterwards never reaches the shell.
    let mut session = ExecSession::open(&cloud, &mel, "shell", &["sh"]);
    assert_session_works(&cloud, &mut session, "shell", "/tmp/before-demotion");
    cloud.ok(&["role", "grant", "mel", "reader", "--project", "default"]);
    assert!(
        session.ends_within(Duration::from_secs(15)),
        "an exec session must end when its caller drops from member to reader"
    );
    assert_input_dropped(&cloud, &mut session, "shell", "/tmp/after-demotion");

    // Token deleted: exec, a watch and a followed log all end.
    cloud.ok(&["role", "grant", "mel", "member", "--project", "default"]);
    let mut session = ExecSession::open(&cloud, &mel, "shell", &["sh"]);
    assert_session_works(&cloud, &mut session, "shell", "/tmp/before-token-rm");
    let watch = open_stream(&cloud, &mel, "/v1/projects/default/instances?watch=true");
    let logs = open_stream(
        &cloud,
        &mel,
        "/v1/projects/default/instances/shell/logs?follow=true",
    );
    cloud.ok(&["token", "rm", &mel_id]);
    assert!(
        session.ends_within(Duration::from_secs(15)),
        "an exec session must end when its token is deleted"
    );
    assert_input_dropped(&cloud, &mut session, "shell", "/tmp/after-token-rm");
    assert!(
        watch.join().expect("watch thread"),
        "a watch must end when its token is deleted"
    );
    assert!(
        logs.join().expect("logs thread"),
        "a followed log of a quiet instance must end when its token is deleted"
    );

    // A role revoked outright (the one case the old relay handled): the
    // relay ends and its stdin copy must end with it.
    let (mel2, _) = token_for(&cloud, "mel");
    let mut session = ExecSession::open(&cloud, &mel2, "shell", &["sh"]);
    assert_session_works(&cloud, &mut session, "shell", "/tmp/before-revoke");
    cloud.ok(&["role", "revoke", "mel", "--project", "default"]);
    assert!(
        session.ends_within(Duration::from_secs(15)),
        "an exec session must end when its caller's role is revoked"
    );
    assert_input_dropped(&cloud, &mut session, "shell", "/tmp/after-revoke");

    // The agent's finalize of a deletion is audited (its routine status
    // reports are not).
    cloud.ok(&["instance", "rm", "shell"]);
    wait_until(Duration::from_secs(30), "shell to be removed", || {
        cloud
            .json(&["instance", "get", "shell"])
            .is_err()
            .then_some(())
    });
    let audit = cloud
        .json(&["audit", "list", "--limit", "5000"])
        .expect("audit");
    let records = audit["items"].as_array().expect("items");
    let agent = format!("host:{}", cloud.host);
    assert!(
        records.iter().any(|r| r["actor"] == agent.as_str()
            && r["path"] == "/v1/projects/default/instances/shell/status"
            && r["status"] == 204),
        "the agent's finalize must be audited: {audit}"
    );
    let reports = records
        .iter()
        .filter(|r| {
            r["actor"] == agent.as_str()
                && r["status"] == 200
                && r["path"].as_str().is_some_and(|p| p.ends_with("/status"))
        })
        .count();
    assert_eq!(reports, 0, "routine status reports stay out of the log");
}

#[test]
fn system_admin_sessions_end_when_the_admin_goes_and_tokens_expire() {
    let cloud = Cloud::start();
    cloud.ok(&["user", "create", "ops", "--system-admin"]);
    let (ops, _) = token_for(&cloud, "ops");
    run_sleeper(&cloud, "box");
    let mut session = ExecSession::open(&cloud, &ops, "box", &["sh"]);
    assert_session_works(&cloud, &mut session, "box", "/tmp/admin-before");
    let all = open_stream(&cloud, &ops, "/v1/instances?watch=true");
    let users = open_stream(&cloud, &ops, "/v1/users?watch=true");
    // Removing the administrator (there is no flag edit: the user goes)
    // cuts off everything it had open.
    cloud.ok(&["user", "rm", "ops"]);
    assert!(
        session.ends_within(Duration::from_secs(15)),
        "a system administrator's exec must end when the administrator is removed"
    );
    assert_input_dropped(&cloud, &mut session, "box", "/tmp/admin-after");
    assert!(
        all.join().expect("thread"),
        "the all-instances watch must end"
    );
    assert!(users.join().expect("thread"), "the users watch must end");

    // An expiring token's watch ends at expiry.
    cloud.ok(&["user", "create", "eve"]);
    cloud.ok(&["role", "grant", "eve", "reader", "--project", "default"]);
    let v = cloud
        .json(&["token", "create", "--user", "eve", "--expires-in", "4s"])
        .expect("token create");
    let eve = v["secret"].as_str().expect("secret").to_string();
    let watch = open_stream(&cloud, &eve, "/v1/projects/default/instances?watch=true");
    assert!(
        watch.join().expect("thread"),
        "a watch must end when its token expires"
    );
}

#[test]
fn tokens_cannot_outlive_their_maker_or_their_user() {
    let cloud = Cloud::start();
    let admin = cloud.admin_token();
    cloud.ok(&["user", "create", "tim"]);
    let v = cloud
        .json(&["token", "create", "--user", "tim", "--expires-in", "1h"])
        .expect("token create");
    let short = v["secret"].as_str().expect("secret").to_string();
    let limit: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(v["token"]["spec"]["expires_at"].clone()).expect("expiry");

    // Asking for no expiry gets the maker's.
    let (s, body) = http(&cloud, "POST", "/v1/tokens", Some(&short), b"{}");
    assert_eq!(s, 201, "{body}");
    let made: Value = serde_json::from_str(&body).expect("json");
    let got: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(made["token"]["spec"]["expires_at"].clone())
            .expect("a token made by an expiring token expires");
    assert!(got <= limit, "{got} is after the maker's {limit}");
    // Asking for later is refused, with the limit named.
    let later = (limit + chrono::Duration::days(365)).to_rfc3339();
    let (s, body) = http(
        &cloud,
        "POST",
        "/v1/tokens",
        Some(&short),
        json!({"expires_at": later}).to_string().as_bytes(),
    );
    assert_eq!(s, 422, "{body}");
    assert!(body.contains("outlive"), "{body}");
    // Earlier is fine; a system administrator may issue anything.
    let earlier = (limit - chrono::Duration::minutes(5)).to_rfc3339();
    let (s, body) = http(
        &cloud,
        "POST",
        "/v1/tokens",
        Some(&short),
        json!({"expires_at": earlier}).to_string().as_bytes(),
    );
    assert_eq!(s, 201, "{body}");
    let (s, body) = http(
        &cloud,
        "POST",
        "/v1/tokens",
        Some(&admin),
        json!({"user": "tim", "expires_at": later})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(s, 201, "{body}");

    // Deleting a user deletes every token, past the first page of them.
    cloud.ok(&["user", "create", "many"]);
    let mut secrets = Vec::new();
    let mut s = connect(&cloud);
    for _ in 0..600 {
        let body = br#"{"user":"many"}"#;
        write!(
            s,
            "POST /v1/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .expect("write");
        s.write_all(body).expect("write body");
        let (status, head) = read_head(&mut s);
        let mut resp = vec![0u8; content_length(&head)];
        s.read_exact(&mut resp).expect("body");
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&resp));
        let v: Value = serde_json::from_slice(&resp).expect("json");
        secrets.push(v["secret"].as_str().expect("secret").to_string());
    }
    cloud.ok(&["user", "rm", "many"]);
    cloud.ok(&["user", "create", "many"]);
    let left = cloud.json(&["token", "list"]).expect("token list");
    let of_many = left["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|t| t["spec"]["user"] == "many")
        .count();
    assert_eq!(of_many, 0, "tokens of a deleted user remain");
    for secret in &secrets {
        let (s, _) = http(&cloud, "GET", "/v1/whoami", Some(secret), b"");
        assert_eq!(s, 401, "a deleted user's token works for its namesake");
    }
}

/// POST `count` requests with `path` and no token over keep-alive
/// connections on `threads` threads.
fn flood_unauthenticated(cloud: &Cloud, path: &str, count: usize, threads: usize) {
    let left = Arc::new(AtomicUsize::new(count));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let mut s = connect(cloud);
            let left = left.clone();
            let request = format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
            );
            std::thread::spawn(move || {
                while left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    s.write_all(request.as_bytes()).expect("write");
                    let (status, head) = read_head(&mut s);
                    let mut body = vec![0u8; content_length(&head)];
                    s.read_exact(&mut body).expect("body");
                    assert_eq!(status, 401);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("flood thread");
    }
}

#[test]
fn unauthenticated_floods_leave_a_small_bounded_audit_log() {
    let cloud = Cloud::start_with(&["--audit-max-records", "50"]);
    let path = format!("/v1/projects/{}", "a".repeat(60_000));
    flood_unauthenticated(&cloud, &path, 5_000, 4);
    let audit = cloud
        .json(&["audit", "list", "--limit", "5000"])
        .expect("audit");
    let records = audit["items"].as_array().expect("items");
    let anonymous: Vec<&Value> = records.iter().filter(|r| r["actor"] == "-").collect();
    assert!(
        !anonymous.is_empty() && anonymous.len() <= 3,
        "5000 unauthenticated calls must leave one record per source and window, not {}",
        anonymous.len()
    );
    for r in records {
        let size = r.to_string().len();
        assert!(size < 2048, "an audit record of {size} bytes: {r}");
    }

    // Authenticated calls are still audited, and the log keeps at most
    // its configured number of records (the oldest pruned).
    for _ in 0..120 {
        let (s, _) = http(
            &cloud,
            "POST",
            "/v1/projects",
            Some(&cloud.admin_token()),
            br#"{"name":"Bad Name!","spec":{}}"#,
        );
        assert_eq!(s, 422);
    }
    cloud.ok(&["project", "create", "after-flood"]);
    let audit = cloud
        .json(&["audit", "list", "--limit", "5000"])
        .expect("audit");
    let records = audit["items"].as_array().expect("items");
    assert!(
        records.len() <= 51,
        "the audit log must stay within its 50 records (+1 of slack): {}",
        records.len()
    );
    assert!(
        records
            .iter()
            .any(|r| r["actor"] == "admin" && r["path"] == "/v1/projects" && r["result"] == "ok"),
        "the last authenticated call is audited: {audit}"
    );
}

/// One GET of the victim's instances: its latency, and whether it was 200.
fn victim_call(cloud: &Cloud, token: &str) -> (Duration, bool) {
    let started = Instant::now();
    let (s, _) = http(cloud, "GET", "/v1/projects/vic/instances", Some(token), b"");
    (started.elapsed(), s == 200)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn one_token_cannot_exhaust_the_api_with_streams() {
    const ATTEMPTS: usize = 20_000;
    const PER_TOKEN: usize = 32;
    let cloud = Cloud::start();
    cloud.ok(&["user", "create", "mallory"]);
    cloud.ok(&["role", "grant", "mallory", "reader", "--project", "default"]);
    cloud.ok(&["user", "create", "victim"]);
    cloud.ok(&["project", "create", "vic"]);
    cloud.ok(&["role", "grant", "victim", "member", "--project", "vic"]);
    let (mallory, _) = token_for(&cloud, "mallory");
    let (victim, _) = token_for(&cloud, "victim");

    let baseline: Vec<Duration> = (0..30).map(|_| victim_call(&cloud, &victim).0).collect();
    let baseline = median(baseline);

    // The attack: keep-alive connections asking for watches; a connection
    // that got a stream is kept open (the stream holds it), one refused
    // with 429 asks again.
    let attempts = Arc::new(AtomicUsize::new(ATTEMPTS));
    let refused = Arc::new(AtomicUsize::new(0));
    let held: Arc<Mutex<Vec<UnixStream>>> = Arc::default();
    let attacking = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let request = format!(
        "GET /v1/projects/default/instances?watch=true HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {mallory}\r\n\r\n"
    );
    let attackers: Vec<_> = (0..8)
        .map(|_| {
            let (attempts, refused, held) = (attempts.clone(), refused.clone(), held.clone());
            let (request, sock) = (request.clone(), cloud.data_dir().join("api.sock"));
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(&sock).expect("connect");
                while attempts
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    s.write_all(request.as_bytes()).expect("write");
                    let (status, head) = read_head(&mut s);
                    match status {
                        200 => {
                            let mut held = held.lock().expect("held");
                            held.push(s);
                            assert!(
                                held.len() <= 4 * PER_TOKEN,
                                "one token got {} concurrent watches",
                                held.len()
                            );
                            drop(held);
                            s = UnixStream::connect(&sock).expect("connect");
                        }
                        429 => {
                            let mut body = vec![0u8; content_length(&head)];
                            s.read_exact(&mut body).expect("body");
                            let body = String::from_utf8_lossy(&body);
                            assert!(body.contains("too_many_requests"), "{body}");
                            refused.fetch_add(1, Ordering::SeqCst);
                        }
                        other => panic!("a stream attempt got {other}: {head}"),
                    }
                }
            })
        })
        .collect();
    let during = {
        let attacking = attacking.clone();
        let cloud_sock = cloud.data_dir().to_path_buf();
        let victim = victim.clone();
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while attacking.load(Ordering::SeqCst) || samples.len() < 10 {
                let started = Instant::now();
                let (s, _) = common::http_at(
                    &cloud_sock,
                    "GET",
                    "/v1/projects/vic/instances",
                    Some(&victim),
                    b"",
                    "application/json",
                );
                samples.push((started.elapsed(), s == 200));
            }
            samples
        })
    };
    for a in attackers {
        a.join().expect("attacker");
    }
    attacking.store(false, Ordering::SeqCst);
    let during = during.join().expect("victim");

    let opened = held.lock().expect("held").len();
    assert_eq!(
        opened, PER_TOKEN,
        "one token holds at most {PER_TOKEN} streams"
    );
    assert_eq!(refused.load(Ordering::SeqCst), ATTEMPTS - PER_TOKEN);
    assert!(
        during.iter().all(|(_, ok)| *ok),
        "the other tenant's calls must all be answered"
    );
    let during_median = median(during.iter().map(|(d, _)| *d).collect());
    // Usual latency: a large factor over the baseline plus a floor, so a
    // loaded test machine cannot flake it, but a starved API fails it.
    let bound = baseline * 20 + Duration::from_millis(250);
    eprintln!(
        "other tenant: median {baseline:?} before, {during_median:?} during {ATTEMPTS} stream attempts ({} samples)",
        during.len()
    );
    assert!(
        during_median <= bound,
        "the other tenant's median latency rose from {baseline:?} to {during_median:?} (bound {bound:?})"
    );

    // Per user: the user's other tokens share a larger allowance.
    let (second, _) = token_for(&cloud, "mallory");
    let (third, _) = token_for(&cloud, "mallory");
    let mut more = Vec::new();
    for _ in 0..PER_TOKEN {
        let mut s = connect(&cloud);
        write!(s, "GET /v1/projects/default/instances?watch=true HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {second}\r\n\r\n").expect("write");
        assert_eq!(
            read_head(&mut s).0,
            200,
            "a second token has its own allowance"
        );
        more.push(s);
    }
    let (s, body) = http(
        &cloud,
        "GET",
        "/v1/projects/default/instances?watch=true",
        Some(&third),
        b"",
    );
    assert_eq!(s, 429, "the user's allowance is spent: {body}");
    assert!(body.contains("per user"), "{body}");

    // Closed streams give their places back.
    held.lock().expect("held").clear();
    more.clear();
    wait_until(Duration::from_secs(15), "places to come back", || {
        let mut s = connect(&cloud);
        write!(s, "GET /v1/projects/default/instances?watch=true HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {third}\r\n\r\n").ok()?;
        (read_head(&mut s).0 == 200).then_some(())
    });
}

#[test]
fn tls_connections_past_the_cap_are_closed_and_the_local_socket_keeps_working() {
    const CAP: usize = 50;
    const EXTRA: usize = 10;
    let cloud = Cloud::start_with(&["--max-connections", "50"]);
    // Plain TCP connections that never start TLS hold their place until
    // the 10 s handshake timeout; those past the cap are closed at once.
    let outcomes: Vec<_> = (0..CAP + EXTRA)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", cloud.port)).expect("connect");
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(4)))
                    .expect("read timeout");
                let mut buf = [0u8; 16];
                // Ok(0) or a reset: closed by the server; a timeout: held.
                let closed = match s.read(&mut buf) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) => !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                };
                (closed, s)
            })
        })
        .collect();
    // While the TLS port is full, the local socket still answers.
    let (status, body) = http(&cloud, "GET", "/v1/whoami", Some(&cloud.admin_token()), b"");
    assert_eq!(status, 200, "{body}");
    let results: Vec<(bool, std::net::TcpStream)> = outcomes
        .into_iter()
        .map(|h| h.join().expect("reader"))
        .collect();
    let closed = results.iter().filter(|(c, _)| *c).count();
    assert_eq!(
        closed,
        EXTRA,
        "of {} connections with a cap of {CAP}, exactly {EXTRA} must be closed at once",
        CAP + EXTRA
    );
}
