//! Global options and how the client finds the API and its token.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};
use nimbus_api::client::{Client, Endpoint};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/nimbus";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    #[default]
    Table,
    Json,
    /// Comma-separated values: `nimbus usage` only; other commands print
    /// their table.
    Csv,
}

#[derive(Args, Clone, Debug)]
pub struct Globals {
    /// Data directory of the local Nimbus (socket, admin token, store).
    #[arg(long, global = true, env = "NIMBUS_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// API endpoint: `unix:/path/api.sock` or `https://host:port`; several
    /// servers of one cloud comma-separated (`https://a:7443,https://b:7443`),
    /// tried in turn when one cannot be reached. Default: the local socket.
    #[arg(long, global = true, env = "NIMBUS_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Certificate to trust for an https endpoint (the server's cert.pem;
    /// with several servers, a file holding each one's certificate, or
    /// their common CA).
    #[arg(long, global = true, env = "NIMBUS_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// API token. Default: NIMBUS_TOKEN, then <data-dir>/admin.token when readable.
    #[arg(long, global = true, env = "NIMBUS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Project to act in.
    #[arg(
        long,
        short = 'p',
        global = true,
        env = "NIMBUS_PROJECT",
        default_value = "default"
    )]
    pub project: String,
    /// Output format (csv: `nimbus usage` only).
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

impl Globals {
    pub fn json(&self) -> bool {
        self.output == OutputFormat::Json
    }

    fn token(&self) -> Option<String> {
        if let Some(t) = &self.token {
            return Some(t.trim().to_string());
        }
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    }

    pub fn client(&self) -> anyhow::Result<Client> {
        let endpoints = match self.endpoint.as_deref() {
            None => vec![Endpoint::Unix(self.data_dir.join("api.sock"))],
            Some(list) => parse_endpoints(list, self.ca_cert.as_deref(), &self.data_dir)?,
        };
        if self.token().is_none() {
            anyhow::bail!(
                "no API token: pass --token or set NIMBUS_TOKEN (as root on the Nimbus machine, {} is read by itself)",
                self.data_dir.join("admin.token").display()
            );
        }
        Ok(Client::with_endpoints(endpoints, self.token())?)
    }
}

/// `--endpoint`: one endpoint or several, comma-separated.
fn parse_endpoints(
    list: &str,
    ca: Option<&Path>,
    data_dir: &Path,
) -> anyhow::Result<Vec<Endpoint>> {
    let endpoints = list
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| parse_endpoint(e, ca, data_dir))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if endpoints.is_empty() {
        anyhow::bail!("--endpoint {list:?} names no endpoint: give unix:/path/to/api.sock or https://host:port[,https://host:port...]");
    }
    Ok(endpoints)
}

fn parse_endpoint(text: &str, ca: Option<&Path>, data_dir: &Path) -> anyhow::Result<Endpoint> {
    if let Some(path) = text.strip_prefix("unix:") {
        return Ok(Endpoint::Unix(PathBuf::from(path)));
    }
    if let Some(rest) = text.strip_prefix("https://") {
        let addr = rest.trim_end_matches('/').to_string();
        let host = addr
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(&addr)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let ca_path = ca
            .map(Path::to_path_buf)
            .unwrap_or_else(|| data_dir.join("tls/cert.pem"));
        let ca_pem = std::fs::read(&ca_path).with_context(|| {
            format!(
                "reading the server certificate {}; pass --ca-cert with the server's cert.pem",
                ca_path.display()
            )
        })?;
        return Ok(Endpoint::Https {
            addr,
            server_name: host,
            ca_pem,
        });
    }
    anyhow::bail!(
        "endpoint {text:?} is not understood: use unix:/path/to/api.sock or https://host:port"
    )
}
