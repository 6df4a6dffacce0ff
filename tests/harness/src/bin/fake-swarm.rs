//! A stand-in for the `swarm` binary, used only by the harness's own tests
//! so that daemon lifecycle handling (start, readiness, stop, kill -9,
//! restart, log capture, cleanup of descendants) can be tested without the
//! real daemon.
//!
//! - `fake-swarm daemon --data-root DIR -H unix://SOCK [...]`: logs its
//!   arguments, starts a child `sleep` (like a container it would leave
//!   behind on a crash), then answers every connection on SOCK with one
//!   line of JSON and closes it. Dies on SIGTERM (default action).
//! - `fake-swarm -H unix://SOCK ARGS...`: connects, reads the line, prints
//!   `{"daemon": <that line>, "args": [ARGS...]}`; exits 1 if the daemon is
//!   unreachable.
//!
//! Never used by real tests of swarm.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, ExitCode};

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn socket_path(args: &[String]) -> Option<&str> {
    flag(args, "-H")?.strip_prefix("unix://")
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(sock) = socket_path(&args) else {
        eprintln!("fake-swarm: -H unix://PATH is required");
        return ExitCode::from(2);
    };
    if args.iter().any(|a| a == "daemon") {
        daemon(&args, sock)
    } else {
        client(&args, sock)
    }
}

fn daemon(args: &[String], sock: &str) -> ExitCode {
    let pid = std::process::id();
    println!("fake-swarm daemon pid {pid} args {args:?}");
    if let Some(root) = flag(args, "--data-root")
        && let Err(e) = std::fs::create_dir_all(root)
    {
        eprintln!("fake-swarm: creating {root}: {e}");
        return ExitCode::FAILURE;
    }
    let child = Command::new("sleep").arg("3600").spawn();
    match &child {
        Ok(c) => println!("fake-swarm child pid {}", c.id()),
        Err(e) => eprintln!("fake-swarm: cannot start a child: {e}"),
    }
    // A crashed predecessor leaves its socket file behind.
    let _ = std::fs::remove_file(sock);
    let listener = match UnixListener::bind(sock) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("fake-swarm: bind {sock}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("fake-swarm listening on {sock}");
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = writeln!(conn, "{{\"pid\": {pid}}}");
    }
    ExitCode::SUCCESS
}

fn client(args: &[String], sock: &str) -> ExitCode {
    let rest: Vec<&String> = {
        let i = args.iter().position(|a| a == "-H").map_or(0, |i| i + 2);
        args[i..].iter().collect()
    };
    let conn = match UnixStream::connect(sock) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fake-swarm: cannot connect to {sock}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut line = String::new();
    if let Err(e) = BufReader::new(conn).read_line(&mut line) {
        eprintln!("fake-swarm: reading from {sock}: {e}");
        return ExitCode::FAILURE;
    }
    let quoted: Vec<String> = rest.iter().map(|a| format!("{a:?}")).collect();
    println!(
        "{{\"daemon\": {}, \"args\": [{}]}}",
        line.trim(),
        quoted.join(", ")
    );
    ExitCode::SUCCESS
}
