//! `nimbus image ...`

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use nimbus_api::client::Method;
use nimbus_api::units::format_size;
use nimbus_api::{Image, ImageScan, ResourceList};
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
    /// Import a VM disk image (qcow2 or raw); VMs boot it through firmware.
    #[command(
        after_help = "Examples:\n  nimbus image import-disk ./debian.qcow2 --name debian-12\n  nimbus image import-disk ./disk.img --name scratch --format raw"
    )]
    ImportDisk {
        file: PathBuf,
        #[arg(long)]
        name: String,
        /// qcow2 or raw; default from the file name (.qcow2, .raw/.img), else detected.
        #[arg(long)]
        format: Option<String>,
    },
    /// Import a kernel (an ELF with a PVH or multiboot entry) and an optional initrd.
    #[command(
        after_help = "Examples:\n  nimbus image import-kernel ./vmlinux --initrd ./initrd.img --name tiny\n  nimbus image import-kernel ./hello-uk --name hello-uk\nA compressed bzImage is refused: extract the ELF with `extract-vmlinux`."
    )]
    ImportKernel {
        file: PathBuf,
        #[arg(long)]
        initrd: Option<PathBuf>,
        #[arg(long)]
        name: String,
    },
    /// List images of the project.
    #[command(alias = "ls")]
    List,
    /// Show one image (and the summary of its last vulnerability scan).
    Get { name: String },
    /// Scan the image's packages against the loaded vulnerability database (runs again
    /// each time) and show the findings.
    #[command(
        after_help = "Examples:\n  nimbus image scan app:1.0\n  nimbus image scan app:1.0 --output json\nNeeds a database: `nimbus vulndb import FILE.zip` (an administrator)."
    )]
    Scan { name: String },
    /// Delete an image no instance uses.
    #[command(alias = "delete")]
    Rm { name: String },
    /// Sign the image's manifest digest as cosign does, with a private key
    /// of `nimbus key create` or cosign (password from COSIGN_PASSWORD or asked).
    #[command(after_help = "Examples:\n  nimbus image sign app --key cosign.key")]
    Sign {
        name: String,
        #[arg(long)]
        key: PathBuf,
    },
}

fn source_name(file: &std::path::Path) -> String {
    file.file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default()
        .replace(
            |c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '-' && c != '_',
            "_",
        )
}

/// Streams `files` one after the other as the body of `path`, with a progress bar.
async fn upload_files(
    g: &Globals,
    client: &nimbus_api::client::Client,
    files: &[PathBuf],
    path: &str,
) -> anyhow::Result<Image> {
    let mut total = 0;
    let mut opened = Vec::new();
    for file in files {
        let f = tokio::fs::File::open(file)
            .await
            .with_context(|| format!("opening {}", file.display()))?;
        total += f.metadata().await?.len();
        opened.push(f);
    }
    let bar = if g.json() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(format!("uploading {}", files[0].display()));
    let b = bar.clone();
    let body = futures::stream::iter(opened.into_iter().map(ReaderStream::new))
        .flatten()
        .map(move |chunk| {
            if let Ok(c) = &chunk {
                b.inc(c.len() as u64);
            }
            chunk
        });
    let result: Result<Image, _> = client.upload(path, body).await;
    bar.finish_and_clear();
    Ok(result?)
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

/// `\nplatforms: linux/amd64, linux/arm64` for an image of several
/// platforms (an instance runs its host's); empty otherwise.
fn platforms_line(i: &Image) -> String {
    if i.status.platforms.len() < 2 {
        return String::new();
    }
    let names: Vec<String> = i
        .status
        .platforms
        .iter()
        .map(|p| match &p.variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        })
        .collect();
    format!("\nplatforms: {}", names.join(", "))
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
                    "image {:?} imported ({}): {} layer(s), {}, {}{}",
                    image.metadata.name,
                    image.status.format,
                    image.status.layers.len(),
                    format_size(image.status.size_bytes),
                    image.status.digest,
                    platforms_line(&image)
                )
            })
        }
        ImageCmd::ImportDisk { file, name, format } => {
            let format = format.or_else(|| match file.extension().and_then(|e| e.to_str()) {
                Some("qcow2") => Some("qcow2".to_string()),
                Some("raw") | Some("img") => Some("raw".to_string()),
                _ => None,
            });
            let mut path = format!(
                "/v1/projects/{p}/images?kind=disk&name={name}&source={}",
                source_name(&file)
            );
            if let Some(f) = &format {
                path.push_str(&format!("&format={f}"));
            }
            let image = upload_files(g, &client, std::slice::from_ref(&file), &path).await?;
            print(g, &image, || {
                let disk = image.status.disk.clone().unwrap_or_default();
                format!(
                    "disk image {:?} imported: {}, virtual size {}, {}",
                    image.metadata.name,
                    disk.format,
                    format_size(disk.virtual_size_bytes),
                    image.status.digest
                )
            })
        }
        ImageCmd::ImportKernel { file, initrd, name } => {
            let kernel_bytes = tokio::fs::metadata(&file)
                .await
                .with_context(|| format!("opening {}", file.display()))?
                .len();
            let path = format!(
                "/v1/projects/{p}/images?kind=kernel&name={name}&kernel_bytes={kernel_bytes}&source={}",
                source_name(&file)
            );
            let mut files = vec![file];
            files.extend(initrd);
            let image = upload_files(g, &client, &files, &path).await?;
            print(g, &image, || {
                let k = image.status.kernel.clone().unwrap_or_default();
                format!(
                    "kernel image {:?} imported: {} entry{}, {}",
                    image.metadata.name,
                    k.entry,
                    if k.initrd.is_some() {
                        ", with initrd"
                    } else {
                        ""
                    },
                    image.status.digest
                )
            })
        }
        ImageCmd::List => {
            let list: ResourceList<Image> =
                client.list_all(&format!("/v1/projects/{p}/images")).await?;
            print(g, &list, || rows(&list.items))
        }
        ImageCmd::Get { name } => {
            let i: Image = client
                .get(&format!("/v1/projects/{p}/images/{name}"))
                .await?;
            print(g, &i, || {
                let summary = match &i.status.vulnerabilities {
                    Some(s) => crate::cmd::vulns::scan_summary(s),
                    None => {
                        format!("vulnerabilities: not scanned (run `nimbus image scan {name}`)")
                    }
                };
                format!(
                    "{}{}\n{summary}",
                    rows(std::slice::from_ref(&i)),
                    platforms_line(&i)
                )
            })
        }
        ImageCmd::Scan { name } => {
            let scan: ImageScan = client
                .post(
                    &format!("/v1/projects/{p}/images/{name}/scan"),
                    &serde_json::json!({}),
                )
                .await?;
            print(g, &scan, || crate::cmd::vulns::scan_text(&scan))
        }
        ImageCmd::Sign { name, key } => super::image_sign::sign(g, &client, &name, &key).await,
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
