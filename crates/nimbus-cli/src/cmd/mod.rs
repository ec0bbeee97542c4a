//! One file per group of subcommands.

pub mod admin;
pub mod agent;
pub mod bucket;
pub mod events;
pub mod exec;
pub mod image;
mod image_sign;
pub mod instance;
pub mod join_token;
pub mod key;
pub mod network;
pub mod policy;
pub mod project;
pub mod servers;
pub mod up;
pub mod usage;
pub mod volume;
pub mod volume_attach;
pub mod vulns;
pub mod wait;
