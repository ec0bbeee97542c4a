//! Controllers: level-triggered loops that converge stored state.

pub mod hosts;
