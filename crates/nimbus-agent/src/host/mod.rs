//! Host effects every driver shares, behind narrow traits with in-memory
//! doubles so their logic is tested without root: the cgroup and `/proc`
//! control files ([`cgroupfs`]), where Nimbus's cgroups live on this host
//! (the cgroup mode and a delegated subtree: [`layout`]), the instance's cgroups ([`cgroups`]: find,
//! count OOM kills, kill and remove), and the mounts left under an instance
//! directory ([`mounts`]), and the new mount API ([`mount_api`]).

pub mod cgroupfs;
pub(crate) mod cgroups;
pub mod layout;
pub mod mount_api;
pub(crate) mod mounts;
