//! Test-only stand-in for the `nimbus` binary's shim subcommand.
//!
//! `nimbus-shim-test shim <dir>` runs the shim like `nimbus shim <dir>` will.
//! `nimbus-shim-test spawn-and-wait <dir>` plays an agent: it spawns the shim, prints
//! the reported phase and then sleeps, so a test can kill it with SIGKILL.

use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let code = match (args.get(1).map(String::as_str), args.get(2)) {
        (Some("shim"), Some(dir)) => match nimbus_agent::run_shim(Path::new(dir)) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("shim: {e:#}");
                1
            }
        },
        (Some("spawn-and-wait"), Some(dir)) => {
            let exe = match std::env::current_exe() {
                Ok(exe) => exe,
                Err(e) => {
                    eprintln!("current exe: {e}");
                    std::process::exit(2);
                }
            };
            match nimbus_agent::shim::spawn_shim(&exe, Path::new(dir)) {
                Ok(state) => {
                    println!("{:?}", state.phase);
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(3600));
                    }
                }
                Err(e) => {
                    eprintln!("spawn: {e}");
                    1
                }
            }
        }
        _ => {
            eprintln!(
                "usage: nimbus-shim-test shim <instance_dir> | spawn-and-wait <instance_dir>"
            );
            2
        }
    };
    std::process::exit(code);
}
