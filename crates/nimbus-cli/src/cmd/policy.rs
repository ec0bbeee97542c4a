//! `nimbus policy ...`: what a project's images must satisfy to launch.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;
use nimbus_api::{Policy, PolicyUpdate, Severity, TrustedKey};

use crate::ctx::Globals;
use crate::output::{print, table};

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Show the project's launch policy and the keys it trusts.
    Get,
    /// Change the project's launch policy (project admins).
    #[command(
        after_help = "Examples:\n  nimbus policy set --require-signature --key ops-release.pub\n  nimbus policy set --remove-key sha256:3f2a...\n  nimbus policy set --no-require-signature\n  nimbus policy set --max-severity high     # refuse images with critical findings\n  nimbus policy set --max-severity none     # no severity rule"
    )]
    Set {
        /// Refuse to launch images without a signature by a trusted key.
        #[arg(long, conflicts_with = "no_require_signature")]
        require_signature: bool,
        /// Launch images whether signed or not.
        #[arg(long)]
        no_require_signature: bool,
        /// Trust this public key (PEM, as `nimbus key create` or cosign write it).
        #[arg(long = "key")]
        keys: Vec<PathBuf>,
        /// Stop trusting the key with this fingerprint (`nimbus policy get`).
        #[arg(long = "remove-key")]
        remove_keys: Vec<String>,
        /// Refuse to launch images with a vulnerability finding above this: unknown, low,
        /// medium, high, critical, or `none` to remove the rule.
        #[arg(long)]
        max_severity: Option<String>,
    },
}

pub async fn run(g: &Globals, cmd: PolicyCmd) -> anyhow::Result<()> {
    let client = g.client()?;
    let path = format!("/v1/projects/{}/policy", g.project);
    let policy: Policy = match cmd {
        PolicyCmd::Get => client.get(&path).await?,
        PolicyCmd::Set {
            require_signature,
            no_require_signature,
            keys,
            remove_keys,
            max_severity,
        } => {
            let (max_severity, clear_max_severity) = match max_severity.as_deref() {
                None => (None, false),
                Some("none") => (None, true),
                Some(level) => (
                    Some(level.parse::<Severity>().map_err(anyhow::Error::msg)?),
                    false,
                ),
            };
            let update = PolicyUpdate {
                require_signature: match (require_signature, no_require_signature) {
                    (true, _) => Some(true),
                    (_, true) => Some(false),
                    _ => None,
                },
                add_keys: keys.iter().map(read_key).collect::<anyhow::Result<_>>()?,
                remove_keys,
                max_severity,
                clear_max_severity,
            };
            if update.require_signature.is_none()
                && update.add_keys.is_empty()
                && update.remove_keys.is_empty()
                && update.max_severity.is_none()
                && !update.clear_max_severity
            {
                bail!("nothing to change: give --require-signature, --no-require-signature, --key, --remove-key or --max-severity");
            }
            client.put(&path, &update).await?
        }
    };
    print(g, &policy, || render(&policy))
}

fn read_key(path: &PathBuf) -> anyhow::Result<TrustedKey> {
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("reading the public key {}", path.display()))?;
    let key = nimbus_sign::PublicKey::from_pem(&pem)
        .with_context(|| format!("{} is not a usable public key", path.display()))?;
    Ok(TrustedKey {
        fingerprint: key.fingerprint(),
        public_key: pem,
        source: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    })
}

fn render(policy: &Policy) -> String {
    let required = if policy.spec.requires_signature() {
        "required"
    } else {
        "not required"
    };
    let severity = match policy.spec.max_severity {
        Some(s) => format!("findings above {s} refused"),
        None => "no rule".to_string(),
    };
    let mut text = format!("signature: {required}\nvulnerabilities: {severity}\n");
    if policy.spec.keys.is_empty() {
        text.push_str("trusted keys: none");
    } else {
        text.push_str(&table(
            &["trusted key", "from"],
            policy
                .spec
                .keys
                .iter()
                .map(|k| vec![k.fingerprint.clone(), k.source.clone()])
                .collect(),
        ));
    }
    text
}
