//! The daemon under systemd's protocols, spoken to by the test as systemd would: a
//! `NOTIFY_SOCKET` datagram socket receives `READY=1`, `STATUS=` and the watchdog's pings
//! (and no more pings while the event loop is stuck), and a journald socket receives the
//! logs, with priorities and fields, when `JOURNAL_STREAM` names the daemon's stderr.
use std::{
    collections::BTreeMap,
    ffi::CString,
    os::unix::{fs::MetadataExt as _, net::UnixDatagram, process::CommandExt as _},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};
use reconciler_tests::{
    gitops::service,
    netns_daemon::{served_repo, Daemon, Place},
    wait_for, Sandbox,
};

/// `web` on 10.96.0.10:80 with `backends` (weight 1), and `spec` lines added.
fn web(backends: &[&str], spec: &str) -> String {
    let weighted: Vec<(&str, u32)> = backends.iter().map(|b| (*b, 1)).collect();
    service("web", "10.96.0.10", &weighted) + spec
}

/// A place for one daemon in `sandbox`, listening on 127.0.0.1 there.
fn place(sandbox: &Sandbox) -> Place<'_> {
    let policy = "policy: {allowLocalHealthChecks: [127.0.0.0/8]}\n";
    Place { hub: sandbox, node: sandbox, listen: "127.0.0.1:9469", policy }
}

/// systemd's side of `NOTIFY_SOCKET`: every datagram the daemon sent, in order.
struct Notified {
    socket: UnixDatagram,
    seen: Vec<String>,
}

impl Notified {
    /// The datagrams that arrive within `within`.
    fn during(&mut self, within: Duration) -> Vec<String> {
        let from = self.seen.len();
        let until = Instant::now() + within;
        let mut buffer = vec![0; 1 << 16];
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            let _ = self.socket.set_read_timeout(Some(left.max(Duration::from_millis(1))));
            match self.socket.recv(&mut buffer) {
                Ok(n) => {
                    self.seen.push(String::from_utf8_lossy(&buffer[..n]).trim_end().to_owned())
                }
                Err(_) => break,
            }
        }
        self.seen[from..].to_vec()
    }

    /// Waits until a datagram that `wanted` accepts, of those from the `since`th on
    /// (received now or before); returns it.
    fn wait(&mut self, what: &str, since: usize, wanted: impl Fn(&str) -> bool) -> Result<String> {
        wait_for(what, Duration::from_secs(20), || {
            self.during(Duration::from_millis(100));
            self.seen[since..].iter().find(|d| wanted(d)).cloned()
        })
    }
}

#[test]
fn systemd_hears_ready_the_status_and_pings_until_the_loop_is_stuck() -> Result<()> {
    let mut sandbox = Sandbox::new("sd-notify")?;
    sandbox.serve_tcp("127.0.0.11:8080", "b11")?;
    let (_work, _served, bare) = served_repo(&web(&["127.0.0.11"], ""))?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("notify");
    let mut notified = Notified { socket: UnixDatagram::bind(&path)?, seen: Vec::new() };
    let notify = path.clone();
    // Pings every 200 ms: half of what systemd would wait.
    let launch = move |command: &mut std::process::Command| {
        command.env("NOTIFY_SOCKET", &notify).env("WATCHDOG_USEC", "400000");
    };
    let url = bare.display().to_string();
    let daemon = Daemon::spawn_node_with(&place(&sandbox), &url, "  interval: 60s\n", "", &launch)?;
    notified
        .wait("READY=1", 0, |d| d.lines().any(|l| l == "READY=1"))
        .with_context(|| daemon.log())?;
    let status = notified.wait("STATUS=", 0, |d| d.starts_with("STATUS=revision "))?;
    assert!(status.ends_with("applied; 1 services, 1 backends"), "{status}");
    let pings = notified.during(Duration::from_secs(2));
    let count = pings.iter().filter(|d| *d == "WATCHDOG=1").count();
    assert!((6..=14).contains(&count), "{count} pings in 2 s: {pings:?}");

    // The event loop stuck: SIGHUP makes it read its configuration, which is now a FIFO
    // nobody writes to, so open(2) blocks the loop itself.
    let config = std::fs::read_to_string(daemon.config_path())?;
    std::fs::remove_file(daemon.config_path())?;
    let fifo = CString::new(daemon.config_path().display().to_string())?;
    // SAFETY: mkfifo(3) of a path this test owns.
    ensure!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) } == 0, "mkfifo");
    // SAFETY: kill(2) of the daemon this test started, by its PID.
    ensure!(unsafe { libc::kill(daemon.pid(), libc::SIGHUP) } == 0, "SIGHUP");
    let stuck = notified.during(Duration::from_secs(2));
    assert!(!stuck.iter().any(|d| d == "WATCHDOG=1"), "pinged while stuck: {stuck:?}");
    // Unstuck: the configuration arrives, and the pings go on.
    std::fs::write(daemon.config_path(), config)?;
    let unstuck = notified.seen.len();
    let again = notified.wait("WATCHDOG=1 again", unstuck, |d| d == "WATCHDOG=1");
    again.with_context(|| daemon.log())?;
    // SAFETY: as above.
    ensure!(unsafe { libc::kill(daemon.pid(), libc::SIGTERM) } == 0, "SIGTERM");
    notified.wait("STOPPING=1", 0, |d| d == "STOPPING=1")?;
    Ok(())
}

/// The fields of journald's native protocol in `datagram` (`KEY=value` lines; a value with a
/// newline is `KEY`, a 64-bit little-endian length and the bytes).
fn fields(datagram: &[u8]) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    let mut rest = datagram;
    while let Some(end) = rest.iter().position(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(&rest[..end]).into_owned();
        match line.split_once('=') {
            Some((key, value)) => {
                fields.insert(key.to_owned(), value.to_owned());
                rest = &rest[end + 1..];
            }
            None => {
                let at = end + 1;
                let Some(size) = rest.get(at..at + 8) else { break };
                let size = u64::from_le_bytes(size.try_into().unwrap_or_default()) as usize;
                let Some(value) = rest.get(at + 8..at + 8 + size) else { break };
                fields.insert(line, String::from_utf8_lossy(value).into_owned());
                rest = rest.get(at + 8 + size + 1..).unwrap_or_default();
            }
        }
    }
    fields
}

#[test]
fn logs_go_to_journald_with_priorities_and_fields_when_stderr_is_the_journal() -> Result<()> {
    let mut sandbox = Sandbox::new("journald")?;
    sandbox.serve_tcp("127.0.0.11:8080", "b11")?;
    // A health check of a backend nobody serves: the service fails open (a warning).
    let check = "  healthCheck: {intervalSeconds: 1, timeoutMillis: 300, unhealthyThreshold: 1}\n";
    let (work, _served, bare) = served_repo(&web(&["127.0.0.12"], check))?;
    let head = work.git(&["rev-parse", "HEAD"]);
    let dir = tempfile::tempdir()?;
    let journal = UnixDatagram::bind(dir.path().join("journal"))?;
    let socket = CString::new(dir.path().join("journal").display().to_string())?;
    let launch = move |command: &mut std::process::Command| {
        // JOURNAL_STREAM names the daemon's stderr: the log file beside its configuration.
        let config = command.get_args().last().map(std::path::PathBuf::from).unwrap_or_default();
        if let Ok(log) = std::fs::metadata(config.with_file_name("daemon.log")) {
            command.env("JOURNAL_STREAM", format!("{}:{}", log.dev(), log.ino()));
        }
        let socket = socket.clone();
        // SAFETY: between fork and exec, only syscalls on strings made before the fork: the
        // daemon gets a mount namespace of its own where journald's socket is the test's.
        unsafe { command.pre_exec(move || journal_socket_is(&socket)) };
    };
    let url = bare.display().to_string();
    let daemon = Daemon::spawn_node_with(&place(&sandbox), &url, "  interval: 60s\n", "", &launch)?;
    let mut seen: Vec<BTreeMap<String, String>> = Vec::new();
    let mut wait_entry = |what: &str, wanted: &dyn Fn(&BTreeMap<String, String>) -> bool| {
        wait_for(what, Duration::from_secs(20), || {
            let mut buffer = vec![0; 1 << 16];
            let _ = journal.set_read_timeout(Some(Duration::from_millis(100)));
            while let Ok(n) = journal.recv(&mut buffer) {
                seen.push(fields(&buffer[..n]));
            }
            seen.iter().find(|entry| wanted(entry)).cloned()
        })
        .with_context(|| format!("{seen:#?}\n{}", daemon.log()))
    };
    let applied = wait_entry("the applied revision, at priority 6", &|e| {
        e.get("MESSAGE").is_some_and(|m| m == "applied") && e.get("REVISION") == Some(&head)
    })?;
    assert_eq!(applied["PRIORITY"], "6", "{applied:?}");
    let fail_open = wait_entry("a warning about a service", &|e| {
        e.get("SERVICE").is_some_and(|s| s == "web/http")
            && e.get("MESSAGE").is_some_and(|m| m.contains("fail open"))
    })?;
    assert_eq!(fail_open["PRIORITY"], "4", "{fail_open:?}");
    // A commit refused: an error, with its revision.
    work.write("services/web.yaml", "kind: Service\n");
    let refused = work.commit("broken");
    work.git(&["push", "-q", "origin", "HEAD"]);
    daemon.ask(&sandbox)?;
    let error = wait_entry("the refusal, at priority 3", &|e| e.get("REVISION") == Some(&refused))?;
    assert_eq!(error["PRIORITY"], "3", "{error:?}");
    assert!(daemon.log().is_empty(), "nothing on stderr: {}", daemon.log());
    Ok(())
}

/// In the child: a mount namespace of its own, a tmpfs on /run, and `socket` bound over
/// `/run/systemd/journal/socket`, where journald's clients send.
fn journal_socket_is(socket: &CString) -> std::io::Result<()> {
    let check = |result: libc::c_int| match result {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    };
    let none = std::ptr::null();
    // SAFETY: plain syscalls on NUL-terminated strings that outlive them.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(none, c"/".as_ptr(), none, libc::MS_REC | libc::MS_PRIVATE, none as _))?;
        check(libc::mount(c"tmpfs".as_ptr(), c"/run".as_ptr(), c"tmpfs".as_ptr(), 0, none as _))?;
        check(libc::mkdir(c"/run/systemd".as_ptr(), 0o755))?;
        check(libc::mkdir(c"/run/systemd/journal".as_ptr(), 0o755))?;
        let target = c"/run/systemd/journal/socket";
        let fd = libc::open(target.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o600);
        check(if fd < 0 { -1 } else { libc::close(fd) })?;
        check(libc::mount(socket.as_ptr(), target.as_ptr(), none, libc::MS_BIND, none as _))?;
    }
    Ok(())
}
