//! S3 clients of the objects benchmark, driven from Rust: concurrent
//! clients, each on its own keep-alive TLS connection, signing every
//! request with SigV4 as any S3 SDK does; and the raw peer, the same bytes
//! written by as many threads with write + fsync into the same filesystem.
//!
//! Why not boto3 for these: 32 boto3 threads in one Python process spend
//! about 0.75 ms of CPU per PUT under the GIL before a byte leaves the
//! process (measured with the transport stubbed out: ~620 PUT/s on this
//! machine), and on large bodies a boto3 client spends more CPU than the
//! server (a profile of 64 MiB PUTs: the Python process took most of the
//! two cores), so they measure Python, not the server.
//!
//! Large bodies are sent with `x-amz-content-sha256: UNSIGNED-PAYLOAD`,
//! the SigV4 form S3 SDKs use for uploads over TLS (the transport already
//! protects the bytes); small ones sign their SHA-256 as well.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use ring::hmac;
use sha2::{Digest, Sha256};

/// Where and as whom the clients talk.
pub struct Target {
    pub addr: std::net::SocketAddr,
    pub ca_pem: PathBuf,
    pub access_key: String,
    pub secret_key: String,
    pub bucket: String,
}

/// Operations per second of one phase.
#[derive(Clone, Copy)]
pub struct Rates {
    pub put: f64,
    pub get: f64,
}

const REGION: &str = "us-east-1";

/// Bodies larger than this go as `UNSIGNED-PAYLOAD`.
const UNSIGNED_ABOVE: usize = 64 << 10;

/// What one run of a client phase does: `count` objects of `size` bytes
/// from `clients` concurrent connections.
#[derive(Clone, Copy)]
pub struct Load {
    pub count: usize,
    pub clients: usize,
    pub size: usize,
}

fn sign(
    target: &Target,
    method: &str,
    path: &str,
    body_sha: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> (String, String) {
    let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
    let day = now.format("%Y%m%d").to_string();
    let host = target.addr.to_string();
    let canonical = format!(
        "{method}\n{path}\n\nhost:{host}\nx-amz-content-sha256:{body_sha}\nx-amz-date:{amz_date}\n\n\
         host;x-amz-content-sha256;x-amz-date\n{body_sha}"
    );
    let scope = format!("{day}/{REGION}/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let mut key = format!("AWS4{}", target.secret_key).into_bytes();
    for part in [day.as_str(), REGION, "s3", "aws4_request"] {
        key = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), part.as_bytes())
            .as_ref()
            .to_vec();
    }
    let signature = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), to_sign.as_bytes());
    let authorization = format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={}",
        target.access_key,
        hex::encode(signature.as_ref())
    );
    (amz_date, authorization)
}

fn tls_connector(ca_pem: &Path) -> tokio_rustls::TlsConnector {
    let pem = std::fs::read(ca_pem).expect("reading the endpoint's certificate");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots
            .add(cert.expect("parsing the endpoint's certificate"))
            .expect("trusting it");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(target: &Target, tls: &tokio_rustls::TlsConnector) -> Sender {
    let tcp = tokio::net::TcpStream::connect(target.addr)
        .await
        .expect("connecting to the S3 endpoint");
    tcp.set_nodelay(true).expect("TCP_NODELAY");
    let name = rustls::pki_types::ServerName::from(target.addr.ip());
    let stream = tls
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the S3 endpoint");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP handshake");
    tokio::spawn(conn);
    sender
}

async fn request(
    target: &Target,
    sender: &mut Sender,
    method: &str,
    key: &str,
    body: Bytes,
) -> Bytes {
    let path = format!("/{}/{key}", target.bucket);
    let body_sha = if body.len() > UNSIGNED_ABOVE {
        "UNSIGNED-PAYLOAD".to_string()
    } else {
        hex::encode(Sha256::digest(&body))
    };
    let (amz_date, authorization) = sign(target, method, &path, &body_sha, chrono::Utc::now());
    let req = hyper::Request::builder()
        .method(method)
        .uri(&path)
        .header("host", target.addr.to_string())
        .header("x-amz-date", amz_date)
        .header("x-amz-content-sha256", body_sha)
        .header("authorization", authorization)
        .header("content-length", body.len())
        .body(Full::new(body))
        .expect("building the request");
    sender.ready().await.expect("connection ready");
    let resp = sender.send_request(req).await.expect("sending the request");
    let status = resp.status();
    let got = resp
        .into_body()
        .collect()
        .await
        .expect("reading the answer")
        .to_bytes();
    assert!(
        status.is_success(),
        "{method} {path}: {status}: {}",
        String::from_utf8_lossy(&got)
    );
    got
}

/// PUT then GET the load's objects; objects per second of each phase.
pub fn s3_ops(target: Target, label: &str, load: Load) -> Rates {
    let Load {
        count,
        clients,
        size,
    } = load;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let target = Arc::new(target);
        let tls = tls_connector(&target.ca_pem);
        let mut senders = Vec::new();
        for _ in 0..clients {
            senders.push(connect(&target, &tls).await);
        }
        let body = Bytes::from(rand_bytes(size));
        let mut rates = [0.0; 2];
        for (phase, method) in ["PUT", "GET"].into_iter().enumerate() {
            let start = Instant::now();
            let mut tasks = Vec::new();
            for (client, mut sender) in std::mem::take(&mut senders).into_iter().enumerate() {
                let (target, body, label) = (target.clone(), body.clone(), label.to_string());
                tasks.push(tokio::spawn(async move {
                    for i in (client..count).step_by(clients) {
                        let key = format!("{label}/{i}");
                        let sent = if method == "PUT" {
                            body.clone()
                        } else {
                            Bytes::new()
                        };
                        let got = request(&target, &mut sender, method, &key, sent).await;
                        if method == "GET" {
                            assert_eq!(got, body, "GET {key} returned other bytes");
                        }
                    }
                    sender
                }));
            }
            for task in tasks {
                senders.push(task.await.expect("client task"));
            }
            rates[phase] = count as f64 / start.elapsed().as_secs_f64();
        }
        Rates {
            put: rates[0],
            get: rates[1],
        }
    })
}

/// The same bytes as files: `clients` threads, each write + fsync, then read.
pub fn raw_ops(dir: &Path, label: &str, load: Load) -> Rates {
    use std::io::Write;
    let Load {
        count,
        clients,
        size,
    } = load;
    let body = rand_bytes(size);
    let phase = |write: bool| -> Duration {
        let start = Instant::now();
        std::thread::scope(|s| {
            for client in 0..clients {
                let body = &body;
                s.spawn(move || {
                    for i in (client..count).step_by(clients) {
                        let path = dir.join(format!("{label}_{i}"));
                        if write {
                            let mut f = std::fs::File::create(&path).expect("raw create");
                            f.write_all(body).expect("raw write");
                            f.sync_all().expect("raw fsync");
                        } else {
                            assert_eq!(&std::fs::read(&path).expect("raw read"), body);
                        }
                    }
                });
            }
        });
        start.elapsed()
    };
    let put = phase(true);
    let get = phase(false);
    Rates {
        put: count as f64 / put.as_secs_f64(),
        get: count as f64 / get.as_secs_f64(),
    }
}

fn rand_bytes(n: usize) -> Vec<u8> {
    // Not secret: any bytes that do not compress do.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
