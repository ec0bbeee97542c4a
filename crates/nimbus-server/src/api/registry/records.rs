//! The repository records in the Nimbus store, and the project images a
//! tag makes: `<path>:<tag>` appears in `nimbus image list` and runs with
//! `nimbus instance run --image <path>:<tag>`.

use nimbus_api::{
    ErrorCode, Image, ImageSpec, Instance, ListOptions, Metadata, Repository, RepositoryStatus,
};
use nimbus_image::ImportedImage;

use super::access::name_unknown;
use super::endpoint::RepoName;
use super::error::{Code, RegResult, RegistryError};
use crate::error::ServerError;
use crate::repo::MAX_PAGE;
use crate::state::AppState;

/// Label on the images the registry made (value: the repository).
pub const REGISTRY_LABEL: &str = "nimbus.io/registry";

pub async fn load(state: &AppState, name: &RepoName) -> RegResult<Option<Repository>> {
    Ok(state
        .repo
        .try_get::<Repository>(Some(&name.project), &name.path)
        .await?)
}

pub async fn load_existing(state: &AppState, name: &RepoName) -> RegResult<Repository> {
    load(state, name).await?.ok_or_else(|| name_unknown(name))
}

/// Applies `change` to the repository's record, creating it when missing,
/// retrying when another request changed it meanwhile.
pub async fn change<F>(state: &AppState, name: &RepoName, mut change: F) -> RegResult<Repository>
where
    F: FnMut(&mut RepositoryStatus) -> RegResult<()>,
{
    for _ in 0..16 {
        let written = match load(state, name).await? {
            None => {
                let mut fresh = Repository {
                    metadata: Metadata::new(&name.path, Some(&name.project)),
                    status: RepositoryStatus::default(),
                };
                change(&mut fresh.status)?;
                state.repo.create(fresh).await
            }
            Some(mut existing) => {
                change(&mut existing.status)?;
                state.repo.update(existing).await
            }
        };
        match written {
            Ok(r) => return Ok(r),
            Err(ServerError(e))
                if matches!(e.code, ErrorCode::Conflict | ErrorCode::AlreadyExists) =>
            {
                continue
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(RegistryError::new(
        Code::Internal,
        format!(
            "repository {} is changing too fast to update; retry",
            name.full()
        ),
    ))
}

/// Every blob and manifest digest any repository keeps (for the image
/// store's garbage collection).
pub async fn kept_digests(repo: &crate::repo::Repo) -> Result<Vec<String>, ServerError> {
    let repos = repo.list_every::<Repository>(None, MAX_PAGE).await?;
    Ok(repos
        .iter()
        .flat_map(|r| r.status.kept_digests().cloned())
        .collect())
}

/// The project image name of a tag.
pub fn image_name(name: &RepoName, tag: &str) -> String {
    format!("{}:{tag}", name.path)
}

/// Makes image `<path>:<tag>` describe `image` (replacing what it held).
pub async fn publish_image(
    state: &AppState,
    name: &RepoName,
    tag: &str,
    image: &ImportedImage,
) -> RegResult<()> {
    let image_name = image_name(name, tag);
    let project = Some(name.project.as_str());
    if let Some(old) = state.repo.try_get::<Image>(project, &image_name).await? {
        if old.status.digest == image.manifest_digest {
            return Ok(());
        }
        remove_record(state, old).await?;
    }
    let mut metadata = Metadata::new(&image_name, project);
    metadata
        .labels
        .insert("nimbus.io/format".into(), image.to_api().format);
    metadata
        .labels
        .insert(REGISTRY_LABEL.into(), name.path.clone());
    let record = Image {
        metadata,
        spec: ImageSpec {
            source: format!("registry push to {}:{tag}", name.full()),
        },
        status: image.to_api(),
    };
    state
        .repo
        .create_with(record, crate::usage::image_created)
        .await?;
    Ok(())
}

/// Removes the project image of a tag, unless an instance uses it.
pub async fn unpublish_image(state: &AppState, name: &RepoName, tag: &str) -> RegResult<()> {
    let image_name = image_name(name, tag);
    let project = Some(name.project.as_str());
    let Some(old) = state.repo.try_get::<Image>(project, &image_name).await? else {
        return Ok(());
    };
    let users = state
        .repo
        .list::<Instance>(project, &ListOptions::default(), |i| {
            i.spec.image == image_name
        })
        .await?;
    if let Some(i) = users.items.first() {
        return Err(RegistryError::new(
            Code::Denied,
            format!(
                "image {image_name:?} is used by instance {:?}; remove the instance first \
                 (`nimbus instance rm {}`)",
                i.metadata.name, i.metadata.name
            ),
        ));
    }
    remove_record(state, old).await
}

async fn remove_record(state: &AppState, old: Image) -> RegResult<()> {
    let ops = crate::usage::image_deleted(&old)?;
    state
        .repo
        .delete_with::<Image>(
            old.metadata.project.as_deref(),
            &old.metadata.name,
            old.metadata.revision,
            ops,
        )
        .await?;
    Ok(())
}

/// After `nimbus image rm` of an image a tag made: the tag goes too, so
/// the registry and the image list agree. The manifest stays, by digest.
pub async fn forget_tag_of(state: &AppState, image: &Image) -> RegResult<()> {
    let (Some(project), Some(path)) = (
        image.metadata.project.as_deref(),
        image.metadata.labels.get(REGISTRY_LABEL),
    ) else {
        return Ok(());
    };
    let Some((_, tag)) = image.metadata.name.rsplit_once(':') else {
        return Ok(());
    };
    let name = RepoName {
        project: project.to_string(),
        path: path.clone(),
    };
    if load(state, &name).await?.is_none() {
        return Ok(());
    }
    // A moved tag replaces its image record, so the tag is this image's.
    change(state, &name, |status| {
        status.tags.remove(tag);
        Ok(())
    })
    .await
    .map(drop)
}
