//! One probe of a target: a TCP connect, or an HTTP `GET` answered as the check expects,
//! within the check's timeout.
use std::{io, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpStream,
};

/// The longest status line read: `HTTP/1.1 200 ` and a reason phrase, with room to spare.
const MAX_STATUS_LINE: u64 = 256;

use reconciler_core::model::{HealthCheck, HealthProtocol};

/// Why a probe failed, as `/status` shows it (the backend's `last_error`).
#[derive(Debug, thiserror::Error)]
pub(super) enum ProbeError {
    #[error("connecting to {addr}: {error}")]
    Connect { addr: SocketAddr, error: io::Error },
    #[error("sending to {addr}: {error}")]
    Send { addr: SocketAddr, error: io::Error },
    #[error("reading from {addr}: {error}")]
    Read { addr: SocketAddr, error: io::Error },
    #[error("{addr} answered no HTTP status line")]
    NoStatusLine { addr: SocketAddr },
    #[error("{addr} answered {status}")]
    Status { addr: SocketAddr, status: u16 },
    #[error("no answer within {timeout:?}")]
    Timeout { timeout: Duration },
}

impl ProbeError {
    /// What kind of failure it was, without addresses or the system's words: what `/status`
    /// shows (the log has the whole error), so that it reads as a verdict, not as a scan of
    /// which ports answer.
    pub(super) fn class(&self) -> String {
        match self {
            ProbeError::Connect { error, .. } => match error.kind() {
                io::ErrorKind::ConnectionRefused => "connection refused".into(),
                io::ErrorKind::TimedOut => "connect timed out".into(),
                _ => "connect failed".into(),
            },
            ProbeError::Send { .. } => "send failed".into(),
            ProbeError::Read { .. } => "read failed".into(),
            ProbeError::NoStatusLine { .. } => "no HTTP status line".into(),
            ProbeError::Status { status, .. } => format!("HTTP status {status}"),
            ProbeError::Timeout { timeout } => format!("no answer within {timeout:?}"),
        }
    }
}

/// [`probe`] within the check's timeout.
pub(super) async fn probe_in_time(addr: SocketAddr, check: &HealthCheck) -> Result<(), ProbeError> {
    let timeout = Duration::from_millis(u64::from(check.timeout_millis));
    tokio::time::timeout(timeout, probe(addr, check))
        .await
        .unwrap_or(Err(ProbeError::Timeout { timeout }))
}

/// One probe of `addr`: a TCP connect, or an HTTP GET answered as `check` expects.
async fn probe(addr: SocketAddr, check: &HealthCheck) -> Result<(), ProbeError> {
    let mut stream =
        TcpStream::connect(addr).await.map_err(|error| ProbeError::Connect { addr, error })?;
    if check.protocol == HealthProtocol::Tcp {
        return Ok(());
    }
    let path = check.path.as_deref().unwrap_or("/");
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: reconciler\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|error| ProbeError::Send { addr, error })?;
    // The status line is all we need ("HTTP/1.1 200 OK\r\n"), however the server writes it
    // (in pieces, a byte at a time): read to its end, at most `MAX_STATUS_LINE` bytes,
    // within the probe's timeout.
    let mut line = Vec::new();
    BufReader::new(stream.take(MAX_STATUS_LINE))
        .read_until(b'\n', &mut line)
        .await
        .map_err(|error| ProbeError::Read { addr, error })?;
    let line = String::from_utf8_lossy(&line);
    let status: u16 = line
        .strip_prefix("HTTP/")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or(ProbeError::NoStatusLine { addr })?;
    let good = match check.expect_status {
        Some(expected) => status == expected,
        None => (200..400).contains(&status),
    };
    if good {
        Ok(())
    } else {
        Err(ProbeError::Status { addr, status })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_errors_say_what_they_said_as_strings() {
        let addr: SocketAddr = "192.0.2.1:8080".parse().unwrap();
        let refused = || io::Error::from(io::ErrorKind::ConnectionRefused);
        let cases = [
            (ProbeError::Connect { addr, error: refused() }, format!("connecting to {addr}: ")),
            (ProbeError::Send { addr, error: refused() }, format!("sending to {addr}: ")),
            (ProbeError::Read { addr, error: refused() }, format!("reading from {addr}: ")),
        ];
        for (error, prefix) in cases {
            assert_eq!(error.to_string(), format!("{prefix}{}", refused()));
        }
        let no_line = ProbeError::NoStatusLine { addr };
        assert_eq!(no_line.to_string(), "192.0.2.1:8080 answered no HTTP status line");
        let status = ProbeError::Status { addr, status: 503 };
        assert_eq!(status.to_string(), "192.0.2.1:8080 answered 503");
        let timeout = ProbeError::Timeout { timeout: Duration::from_millis(500) };
        assert_eq!(timeout.to_string(), "no answer within 500ms");
        // What /status shows: the kind, no address.
        let refused = ProbeError::Connect { addr, error: refused() };
        assert_eq!(refused.class(), "connection refused");
        assert_eq!(status.class(), "HTTP status 503");
        assert_eq!(timeout.class(), "no answer within 500ms");
    }
}
