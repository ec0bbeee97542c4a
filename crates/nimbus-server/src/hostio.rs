//! Re-export: the trait lives in nimbus-api so agents implement it without depending on the server.
pub use nimbus_api::hostio::{ExecStream, HostIo};
