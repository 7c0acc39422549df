//! A notification receiver, in a sandbox's network namespace or on the test's loopback: a
//! real HTTP server that keeps every request it gets and answers as the test says (at once,
//! late, or with an error), or that is not there at all (not yet listening).
use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use crate::{wait_for, Sandbox};

/// How the receiver answers.
#[derive(Clone, Copy, Debug)]
pub enum Answer {
    /// With this status, at once.
    Status(u16),
    /// With 200, after this long.
    Late(Duration),
}

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub path: String,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    pub body: serde_json::Value,
    raw: Vec<u8>,
}

impl Delivery {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// Whether its `X-Reconciler-Signature-256` is the body's HMAC-SHA256 under `secret`.
    pub fn signed_with(&self, secret: &[u8]) -> bool {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else { return false };
        mac.update(&self.raw);
        let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        self.header("x-reconciler-signature-256") == Some(expected.as_str())
    }

    /// The generic body's `event`.
    pub fn event(&self) -> &str {
        self.body["event"].as_str().unwrap_or_default()
    }
}

/// A receiver: not listening until [`listen`](Self::listen) (a receiver that is down).
pub struct Receiver {
    answer: Arc<Mutex<Answer>>,
    got: Arc<Mutex<Vec<Delivery>>>,
    running: Option<(Arc<tiny_http::Server>, JoinHandle<()>)>,
}

impl Receiver {
    /// A receiver that will answer `answer`.
    pub fn new(answer: Answer) -> Receiver {
        Receiver { answer: Arc::new(Mutex::new(answer)), got: Arc::default(), running: None }
    }

    /// Listens on `addr` (port 0: any) in `sandbox`'s namespace, or in the test's own with
    /// none; where it listens.
    pub fn listen(&mut self, sandbox: Option<&Sandbox>, addr: &str) -> Result<SocketAddr> {
        self.serve(sandbox, addr, None)
    }

    /// [`listen`](Self::listen) with TLS: the certificate and key in PEM.
    pub fn listen_tls(
        &mut self,
        sandbox: &Sandbox,
        addr: &str,
        (certificate, key): (Vec<u8>, Vec<u8>),
    ) -> Result<SocketAddr> {
        let tls = tiny_http::SslConfig { certificate, private_key: key };
        self.serve(Some(sandbox), addr, Some(tls))
    }

    fn serve(
        &mut self,
        sandbox: Option<&Sandbox>,
        addr: &str,
        tls: Option<tiny_http::SslConfig>,
    ) -> Result<SocketAddr> {
        let addr: SocketAddr = addr.parse().with_context(|| format!("address {addr}"))?;
        let bind = move || TcpListener::bind(addr).with_context(|| format!("binding {addr}"));
        let listener = match sandbox {
            Some(sandbox) => sandbox.in_netns(bind)?,
            None => bind()?,
        };
        let local = listener.local_addr()?;
        let server = Arc::new(
            tiny_http::Server::from_listener(listener, tls)
                .map_err(|e| anyhow::anyhow!("a server on {addr}: {e}"))?,
        );
        let (serving, answer, got) =
            (Arc::clone(&server), Arc::clone(&self.answer), Arc::clone(&self.got));
        let thread = std::thread::spawn(move || {
            // Ends when Drop unblocks the server.
            while let Ok(request) = serving.recv() {
                let (answer, got) = (Arc::clone(&answer), Arc::clone(&got));
                // A thread each: a late answer holds up no other request.
                std::thread::spawn(move || take(request, &answer, &got));
            }
        });
        self.running = Some((server, thread));
        Ok(local)
    }

    /// A receiver answering 204 at `addr` (see [`listen`](Self::listen)), and the
    /// configuration's `notify:` lines that send it every event.
    pub fn answering(sandbox: Option<&Sandbox>, addr: &str) -> Result<(Receiver, String)> {
        let mut receiver = Receiver::new(Answer::Status(204));
        let at = receiver.listen(sandbox, addr)?;
        Ok((receiver, format!("notify:\n  - url: http://{at}/hook\n")))
    }

    /// From now on, answers `answer`.
    pub fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap_or_else(|e| e.into_inner()) = answer;
    }

    /// Every request so far, in the order they came.
    pub fn got(&self) -> Vec<Delivery> {
        self.got.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits (40 s at most: a retry's backoff may have grown) until a request that `wanted` accepts has come; returns it.
    pub fn wait(&self, what: &str, wanted: impl Fn(&Delivery) -> bool) -> Result<Delivery> {
        wait_for(what, Duration::from_secs(40), || self.got().into_iter().find(|d| wanted(d)))
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some((server, thread)) = self.running.take() {
            server.unblock();
            let _ = thread.join();
        }
    }
}

/// Keeps `request` and answers it as `answer` says.
fn take(mut request: tiny_http::Request, answer: &Mutex<Answer>, got: &Mutex<Vec<Delivery>>) {
    let mut raw = Vec::new();
    if request.as_reader().read_to_end(&mut raw).is_err() {
        return;
    }
    let headers = request
        .headers()
        .iter()
        .map(|h| (h.field.as_str().as_str().to_ascii_lowercase(), h.value.as_str().to_owned()))
        .collect();
    let body = serde_json::from_slice(&raw).unwrap_or(serde_json::Value::Null);
    let delivery = Delivery { path: request.url().to_owned(), headers, body, raw };
    got.lock().unwrap_or_else(|e| e.into_inner()).push(delivery);
    let answer = *answer.lock().unwrap_or_else(|e| e.into_inner());
    let status = match answer {
        Answer::Status(status) => status,
        Answer::Late(after) => {
            std::thread::sleep(after);
            200
        }
    };
    let _ = request.respond(tiny_http::Response::empty(status));
}
