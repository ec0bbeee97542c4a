//! Errors of the object layer, for callers outside the S3 protocol (the
//! CLI/API and the listener). Inside S3 operations they become S3 XML
//! errors (see `service.rs`).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] nimbus_store::StoreError),
    #[error(
        "stored {what} at {key} is corrupt ({detail}); delete the key or restore it from a backup"
    )]
    Corrupt {
        what: &'static str,
        key: String,
        detail: String,
    },
    #[error("bucket {0:?} does not exist; create it with `nimbus bucket create {0}`")]
    NoSuchBucket(String),
    #[error("bucket {0:?} already exists; choose another name")]
    BucketExists(String),
    #[error(
        "bucket {0:?} is not empty; delete its objects first (aws s3 rm --recursive s3://{0}), and in a versioned bucket every version and delete marker too (aws s3api list-object-versions --bucket {0})"
    )]
    BucketNotEmpty(String),
    #[error("bucket name {name:?} is invalid: {reason}")]
    InvalidBucketName { name: String, reason: &'static str },
    #[error("access key {0:?} does not exist; list keys with `nimbus s3 credentials list`")]
    NoSuchAccessKey(String),
    #[error("sealing or opening the secret of access key {access_key}: {detail}")]
    Seal { access_key: String, detail: String },
    #[error("TLS setup for the S3 endpoint: {0}")]
    Tls(String),
}

impl ObjectsError {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ObjectsError::Io { what, path, source }
    }
}
