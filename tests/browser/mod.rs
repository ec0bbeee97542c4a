//! Headless Chromium for the console's test and benchmark: Debian's
//! `chromium` driven through `chromedriver` (W3C WebDriver) with the
//! `fantoccini` client. Each browser gets its own profile directory and
//! process group, and is ended by its id when dropped.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

/// A free TCP port on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on loopback")
}

impl Browser {
    /// Start chromedriver and a headless Chromium session (self-signed
    /// certificates accepted: the test cloud makes its own).
    pub async fn start() -> Browser {
        Browser::start_with("normal").await
    }

    /// With a WebDriver page load strategy: `none` makes navigation
    /// return at once, so a benchmark's own clock sees the whole load.
    pub async fn start_with(page_load_strategy: &str) -> Browser {
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("chromium is not installed: run scripts/deps (Debian's chromium and chromium-driver)");
        let port = free_port();
        let driver = {
            use std::os::unix::process::CommandExt;
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // Its own group, so the browser it starts ends with it.
                .process_group(0)
                .spawn()
                .expect(
                    "chromedriver is not installed: run scripts/deps (Debian's chromium-driver)",
                )
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().expect("browser profile dir");
        let caps = json!({
            "acceptInsecureCerts": true,
            "unhandledPromptBehavior": "ignore",
            "pageLoadStrategy": page_load_strategy,
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--window-size=1400,900",
                    "--no-first-run", "--disable-extensions",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let caps = match caps {
            Value::Object(m) => m,
            _ => unreachable!("capabilities are an object"),
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session through chromedriver");
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    /// Run `script` (a function body; it may return a promise) until it
    /// returns something truthy, or panic naming `what`.
    pub async fn wait_js(&self, what: &str, timeout: Duration, script: &str) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            match self.client.execute(script, vec![]).await {
                Ok(v) if truthy(&v) => return v,
                Ok(v) => last = v,
                Err(e) => last = Value::String(e.to_string()),
            }
            if Instant::now() > deadline {
                let shot = self.screenshot_to(&std::env::temp_dir(), "timeout").await;
                panic!("timed out after {timeout:?} waiting for {what}; last answer {last}; screenshot {}", shot.display());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Evaluate `script` once.
    pub async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script {script:?} failed: {e}"))
    }

    /// Whether a JavaScript dialog (alert, confirm, prompt) is open.
    pub async fn dialog_open(&self) -> Option<String> {
        self.client.get_alert_text().await.ok()
    }

    pub async fn css(&self, selector: &str) -> fantoccini::elements::Element {
        self.client
            .find(Locator::Css(selector))
            .await
            .unwrap_or_else(|e| panic!("no element {selector}: {e}"))
    }

    pub async fn click(&self, selector: &str) {
        self.css(selector)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("clicking {selector}: {e}"));
    }

    pub async fn fill(&self, selector: &str, text: &str) {
        let e = self.css(selector).await;
        e.clear().await.ok();
        e.send_keys(text)
            .await
            .unwrap_or_else(|err| panic!("typing into {selector}: {err}"));
    }

    /// Save a PNG of the window as `<dir>/<name>.png`.
    pub async fn screenshot_to(&self, dir: &Path, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.unwrap_or_default();
        let _ = std::fs::create_dir_all(dir);
        let path = dir.join(format!("{name}.png"));
        let _ = std::fs::write(&path, png);
        path
    }

    /// End the session, then the driver and its browser (`Drop`).
    pub async fn quit(self) {
        let _ = self.client.clone().close().await;
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

/// Kill chromedriver's process group (it and the browser it started) by
/// its id, and reap it.
impl Drop for Browser {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.driver.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.driver.wait();
    }
}
