//! The rules of the resources, without HTTP and without the store.
//!
//! A handler parses the request, fetches what the request names (an image,
//! a project's defaults, the instance as stored), asks the domain whether
//! the request is valid and what the stored object becomes, then writes it
//! through `repo` and answers. The functions here are pure, so every rule is
//! unit-tested without a router or a database. Their errors are enums whose
//! messages name the field, the value and what to do next; `error.rs` maps
//! them to API errors (422 for an invalid request, 409 for a conflict with
//! the current state).
//!
//! Nothing here reads the store, touches a host or knows about axum.

pub mod addresses;
pub mod attachments;
pub mod events;
pub mod image_usage;
pub mod instances;
pub mod networks;
pub mod secgroups;
pub mod usage;
pub mod volumes;
