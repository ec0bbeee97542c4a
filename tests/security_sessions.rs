//! Security: see issue text; tests are added by the work in progress.

#[allow(dead_code)]
mod common;
