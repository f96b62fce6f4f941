//! `tamis-healthcheck [ADDR]`: the container's HEALTHCHECK. The distroless runtime image has no
//! shell and no curl, so this is a tiny standalone program (std only, built with plain `rustc` in
//! the Dockerfile's build stage) that sends `GET /healthz` to tamis's admin listener (default
//! 127.0.0.1:8081) and exits 0 on a 200 answer, 1 otherwise, within 3 seconds.
//!
//! It checks what an orchestrator's HTTP probe would: that the admin listener accepts a
//! connection and answers. It is not part of tamis itself (`cargo build` ignores it).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(3);

fn probe(addr: &str) -> Result<(), String> {
    let target: SocketAddr = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))?;
    let mut s = TcpStream::connect_timeout(&target, TIMEOUT).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: tamis-healthcheck\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("{addr}: {e}"))?;
    // The status line is all that matters; read at most a few hundred bytes.
    let mut head = [0u8; 256];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(format!("{addr}: {e}")),
        }
    }
    let head = String::from_utf8_lossy(&head[..n]);
    let status = head.lines().next().unwrap_or("");
    if status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.0 200") {
        Ok(())
    } else {
        Err(format!("{addr}: answered {status:?}"))
    }
}

fn main() -> ExitCode {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8081".to_owned());
    match probe(&addr) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tamis-healthcheck: {e}");
            ExitCode::FAILURE
        }
    }
}
