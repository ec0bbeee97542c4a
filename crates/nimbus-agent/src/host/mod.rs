//! Host effects every driver shares, behind narrow traits with in-memory
//! doubles so their logic is tested without root: the cgroup and `/proc`
//! control files ([`cgroupfs`]), the instance's cgroups ([`cgroups`]: find,
//! count OOM kills, kill and remove), and the mounts left under an instance
//! directory ([`mounts`]).

pub mod cgroupfs;
pub(crate) mod cgroups;
pub(crate) mod mounts;
