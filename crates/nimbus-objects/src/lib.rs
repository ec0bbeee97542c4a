//! Nimbus object storage: an S3-compatible endpoint whose metadata (buckets,
//! objects, access keys) lives in the Nimbus [`Store`](nimbus_store::Store)
//! and whose object bytes live in files under `<data>/objects/`.
//!
//! The protocol (SigV4 headers, presigned URLs, streaming chunked uploads,
//! XML) is the `s3s` crate's; this crate supplies what stands behind it:
//! [`service::NimbusS3`] (the operations), [`auth`] (access keys and who may
//! touch which bucket), [`data::DataStore`] (durable bytes on disk) and
//! [`listener`] (the TLS port).
//!
//! What this crate must never do:
//! - name a data file after an object key: files are named by a random id,
//!   so no key (`../`, `/`, any UTF-8) can reach outside `<data>/objects/`;
//! - acknowledge a write before its bytes and their directory entry are
//!   fsync'd and its metadata committed;
//! - make an object visible before its data is complete: the metadata
//!   record, written last, is what makes it visible;
//! - keep an access key's secret in plain text: secrets are sealed by the
//!   embedding server's [`auth::Sealer`] (SigV4 needs the secret itself to
//!   verify a signature, so it cannot be hashed);
//! - know its embedder: the server hands in a store, a sealer and paths.

pub mod auth;
pub mod credential_cache;
pub mod credentials;
pub mod data;
pub mod error;
pub mod etag;
pub mod keys;
pub mod listener;
pub mod listing;
pub mod metering;
pub mod records;
pub mod service;
pub mod versioning;

pub use error::ObjectsError;
