//! `nimbus-shim`: the per-instance supervisor on its own.
//!
//! One shim runs per instance for as long as the instance runs, so its
//! resident size is what every instance costs the host. The `nimbus`
//! binary carries the server, the CLI, TLS, SQLite and the OpenAPI document;
//! this one links only the shim's code path of nimbus-agent, so the pages a
//! running shim touches (its event loop, logs, exec) are packed into a small
//! file instead of being spread over a large one.
//!
//! The agent runs it as `nimbus-shim shim <instance_dir>`, the arguments of
//! `nimbus shim <instance_dir>`, which stays available (the agent falls back
//! to it when no `nimbus-shim` is installed beside `nimbus`). The control
//! socket is the same, so either agent adopts shims started by the other.
//! It also serves the agent as a single-threaded helper that mounts a
//! volume into a running container's mount namespace (`container-mount`,
//! `container-unmount`).

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // `container-mount|container-unmount ...`: the agent's single-threaded
    // helper for volumes of running containers.
    if let Some(code) = nimbus_agent::volume::live::helper_main(&args) {
        return code;
    }
    let dir = match args.as_slice() {
        [_, sub, dir] if sub == "shim" => dir,
        [_, dir] if dir != "--help" && dir != "-h" => dir,
        _ => {
            eprintln!("usage: nimbus-shim [shim] <instance_dir>  (started by the Nimbus agent)");
            return ExitCode::from(2);
        }
    };
    match nimbus_agent::run_shim(Path::new(dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nimbus shim: {e:#}");
            ExitCode::FAILURE
        }
    }
}
