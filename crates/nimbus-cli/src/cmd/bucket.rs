//! `nimbus bucket ...` and `nimbus s3 credentials ...`: buckets and access
//! keys of the project's object storage (the objects themselves go through
//! the S3 endpoint, e.g. `aws --endpoint-url https://127.0.0.1:7480 s3 ...`).

use clap::Subcommand;
use nimbus_api::client::{query_escape, Method};
use nimbus_server::api::objects::{AccessKey, Bucket, CreateBucket, NewAccessKey};

use crate::ctx::Globals;
use crate::output::{age, print, table};

#[derive(Subcommand)]
pub enum BucketCmd {
    /// Create a bucket owned by the project.
    #[command(
        after_help = "Examples:\n  nimbus bucket create photos\n  nimbus bucket create www --public-read"
    )]
    Create {
        name: String,
        /// Anyone may GET its objects without signing.
        #[arg(long)]
        public_read: bool,
    },
    /// List the project's buckets.
    #[command(alias = "ls")]
    List,
    /// Delete an empty bucket.
    #[command(alias = "delete")]
    Rm { name: String },
}

#[derive(Subcommand)]
pub enum S3Cmd {
    /// S3 access keys of the project.
    #[command(subcommand)]
    Credentials(CredentialsCmd),
}

#[derive(Subcommand)]
pub enum CredentialsCmd {
    /// Make an access key for you in the project; the secret is printed once.
    Create,
    /// List the project's access keys (never their secrets).
    #[command(alias = "ls")]
    List,
    /// Delete an access key: requests signed with it fail from then on.
    #[command(alias = "delete")]
    Rm { access_key_id: String },
}

pub async fn bucket(g: &Globals, cmd: BucketCmd) -> anyhow::Result<()> {
    let client = g.client()?;
    let base = format!("/v1/projects/{}/buckets", query_escape(&g.project));
    match cmd {
        BucketCmd::Create { name, public_read } => {
            let b: Bucket = client
                .post(&base, &CreateBucket { name, public_read })
                .await?;
            print(g, &b, || {
                format!("bucket {:?} created in project {:?}", b.name, b.project)
            })
        }
        BucketCmd::List => {
            let items: Vec<Bucket> = client.get(&base).await?;
            print(g, &items, || {
                table(
                    &["name", "public-read", "age"],
                    items
                        .iter()
                        .map(|b| {
                            vec![
                                b.name.clone(),
                                b.public_read.to_string(),
                                age(Some(b.created)),
                            ]
                        })
                        .collect(),
                )
            })
        }
        BucketCmd::Rm { name } => {
            client
                .request_bytes(
                    Method::DELETE,
                    &format!("{base}/{}", query_escape(&name)),
                    None,
                )
                .await?;
            if !g.json() {
                crate::outln!("bucket {name:?} deleted")?;
            }
            Ok(())
        }
    }
}

pub async fn s3(g: &Globals, cmd: S3Cmd) -> anyhow::Result<()> {
    let client = g.client()?;
    let base = format!("/v1/projects/{}/s3credentials", query_escape(&g.project));
    let S3Cmd::Credentials(cmd) = cmd;
    match cmd {
        CredentialsCmd::Create => {
            let k: NewAccessKey = client.post(&base, &serde_json::json!({})).await?;
            print(g, &k, || {
                format!(
                    "access key id:     {}\nsecret access key: {}\n(the secret is shown only now; keep it)",
                    k.access_key_id, k.secret_access_key
                )
            })
        }
        CredentialsCmd::List => {
            let items: Vec<AccessKey> = client.get(&base).await?;
            print(g, &items, || {
                table(
                    &["access key id", "user", "age"],
                    items
                        .iter()
                        .map(|k| {
                            vec![
                                k.access_key_id.clone(),
                                k.user.clone(),
                                age(Some(k.created)),
                            ]
                        })
                        .collect(),
                )
            })
        }
        CredentialsCmd::Rm { access_key_id } => {
            client
                .request_bytes(
                    Method::DELETE,
                    &format!("{base}/{}", query_escape(&access_key_id)),
                    None,
                )
                .await?;
            if !g.json() {
                crate::outln!("access key {access_key_id} deleted")?;
            }
            Ok(())
        }
    }
}
