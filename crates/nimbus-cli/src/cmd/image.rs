//! `nimbus image ...`

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use nimbus_api::client::Method;
use nimbus_api::units::format_size;
use nimbus_api::{Image, ResourceList};
use tokio_util::io::ReaderStream;

use crate::ctx::Globals;
use crate::output::{age, print, table};

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Import a root-filesystem tarball (plain, gzip or zstd) or an OCI archive.
    #[command(
        after_help = "Examples:\n  tar -C rootfs -c . > rootfs.tar && nimbus image import rootfs.tar --name mybox\n  skopeo copy docker://alpine oci-archive:alpine.tar && nimbus image import alpine.tar --name alpine"
    )]
    Import {
        file: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// List images of the project.
    #[command(alias = "ls")]
    List,
    /// Show one image.
    Get { name: String },
    /// Delete an image no instance uses.
    #[command(alias = "delete")]
    Rm { name: String },
}

fn rows(items: &[Image]) -> String {
    table(
        &["name", "format", "digest", "layers", "size", "age"],
        items
            .iter()
            .map(|i| {
                vec![
                    i.metadata.name.clone(),
                    i.status.format.clone(),
                    i.status.digest.chars().take(19).collect(),
                    i.status.layers.len().to_string(),
                    format_size(i.status.size_bytes),
                    age(Some(i.metadata.created_at)),
                ]
            })
            .collect(),
    )
}

pub async fn run(g: &Globals, cmd: ImageCmd) -> anyhow::Result<()> {
    let client = g.client()?;
    let p = &g.project;
    match cmd {
        ImageCmd::Import { file, name } => {
            let f = tokio::fs::File::open(&file)
                .await
                .with_context(|| format!("opening {}", file.display()))?;
            let len = f.metadata().await?.len();
            let bar = if g.json() {
                ProgressBar::hidden()
            } else {
                ProgressBar::new(len)
            };
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message(format!("uploading {}", file.display()));
            let b = bar.clone();
            let body = ReaderStream::new(f).map(move |chunk| {
                if let Ok(c) = &chunk {
                    b.inc(c.len() as u64);
                }
                chunk
            });
            let source = file
                .file_name()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            let path = format!(
                "/v1/projects/{p}/images?name={name}&source={}",
                source.replace(
                    |c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '-' && c != '_',
                    "_"
                )
            );
            let result: Result<Image, _> = client.upload(&path, body).await;
            bar.finish_and_clear();
            let image = result?;
            print(g, &image, || {
                format!(
                    "image {:?} imported: {} layer(s), {}, {}",
                    image.metadata.name,
                    image.status.layers.len(),
                    format_size(image.status.size_bytes),
                    image.status.digest
                )
            })
        }
        ImageCmd::List => {
            let list: ResourceList<Image> = client.get(&format!("/v1/projects/{p}/images")).await?;
            print(g, &list, || rows(&list.items))
        }
        ImageCmd::Get { name } => {
            let i: Image = client
                .get(&format!("/v1/projects/{p}/images/{name}"))
                .await?;
            print(g, &i, || rows(std::slice::from_ref(&i)))
        }
        ImageCmd::Rm { name } => {
            client
                .request_bytes(
                    Method::DELETE,
                    &format!("/v1/projects/{p}/images/{name}"),
                    None,
                )
                .await?;
            print(g, &serde_json::json!({"deleted": name}), || {
                format!("image {name:?} deleted")
            })
        }
    }
}
