//! Security tests (issue: security defects closed); filled in by the work on it.

mod common;
