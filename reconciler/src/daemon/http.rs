//! A small HTTP/1.1 endpoint, enough for scrapers, probes and webhooks: one request per
//! connection, no bodies read. GET /metrics, /healthz, /readyz, /status; POST /reconcile.
use std::{io, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use super::Shared;

/// Requests larger than this are refused; ours have no bodies.
const MAX_REQUEST: usize = 8192;

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            // A client that sends nothing for 10 s is dropped.
            let _ = tokio::time::timeout(Duration::from_secs(10), handle(stream, &shared)).await;
        });
    }
}

async fn handle(mut stream: TcpStream, shared: &Shared) -> io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || request.len() + n > MAX_REQUEST {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&request);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, content_type, body) = respond(method, path, shared);
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

fn respond(method: &str, path: &str, shared: &Shared) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    const JSON: &str = "application/json";
    match (method, path) {
        ("GET", "/metrics") => {
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", shared.metrics().render())
        }
        ("GET", "/healthz") => ("200 OK", TEXT, "ok\n".into()),
        ("GET", "/readyz") if shared.status().ready => ("200 OK", TEXT, "ready\n".into()),
        ("GET", "/readyz") => {
            ("503 Service Unavailable", TEXT, "not ready: no successful reconcile yet\n".into())
        }
        ("GET", "/status") => {
            let body = serde_json::to_string_pretty(&*shared.status()).unwrap_or_default();
            ("200 OK", JSON, body + "\n")
        }
        ("POST", "/reconcile") => {
            shared.trigger.notify_one();
            ("202 Accepted", TEXT, "reconcile triggered\n".into())
        }
        (_, "/metrics" | "/healthz" | "/readyz" | "/status" | "/reconcile") => {
            ("405 Method Not Allowed", TEXT, "method not allowed\n".into())
        }
        _ => ("404 Not Found", TEXT, "not found\n".into()),
    }
}

/// A blocking client for the same endpoint: `(status code, body)` of `METHOD path`.
pub fn request(addr: &str, method: &str, path: &str) -> io::Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an HTTP response"))?;
    Ok((code, body.to_owned()))
}
