//! systemd's service protocol (`Type=notify`), through sd-notify: `READY=1` once the data
//! plane is adopted with a good revision or a first run applied one, a `STATUS=` line with
//! the applied revision and the last error, and `WATCHDOG=1` from the event loop itself, so a
//! loop that is stuck stops the pings and systemd restarts the daemon (the pinned data plane
//! serves meanwhile). Without `NOTIFY_SOCKET` (not under systemd) every call does nothing.
use std::time::Duration;

use sd_notify::NotifyState;

use super::status::DaemonStatus;

/// What systemd was told, so each change is sent once.
#[derive(Default)]
pub(super) struct Systemd {
    ready: bool,
    status: String,
    /// How often to ping: half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3) advises.
    ping_every: Option<Duration>,
}

impl Systemd {
    /// The protocol as the environment sets it up (`NOTIFY_SOCKET`, `WATCHDOG_USEC`).
    pub(super) fn from_env() -> Systemd {
        let var = |name| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        // As libsystemd's sd_watchdog_enabled(3): `WATCHDOG_PID`, when set, must be ours;
        // unset, the watchdog is this process's (sd-notify's own check requires it).
        let ours = var("WATCHDOG_PID").is_none_or(|pid| pid == u64::from(std::process::id()));
        let usec = var("WATCHDOG_USEC").filter(|&usec| usec > 0 && ours);
        let ping_every = usec.map(|usec| Duration::from_micros(usec) / 2);
        Systemd { ping_every, ..Systemd::default() }
    }

    /// How often the loop pings the watchdog, if systemd watches it.
    pub(super) fn ping_every(&self) -> Option<Duration> {
        self.ping_every
    }

    /// `WATCHDOG=1`: the loop is alive.
    pub(super) fn ping(&self) {
        send(&[NotifyState::Watchdog]);
    }

    /// `READY=1` once the daemon is ready, and `STATUS=` whenever what it says changes.
    pub(super) fn report(&mut self, status: &DaemonStatus, adopted: bool) {
        if !self.ready && (status.ready || adopted) {
            self.ready = true;
            send(&[NotifyState::Ready]);
        }
        let line = status_line(status);
        if line != self.status {
            send(&[NotifyState::Status(&line)]);
            self.status = line;
        }
    }

    /// `STOPPING=1`: the daemon ends (the data plane stays).
    pub(super) fn stopping(&self) {
        send(&[NotifyState::Stopping]);
    }
}

/// A failure to tell systemd is no reason to stop: the unit's timeouts say the rest.
fn send(states: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(false, states) {
        tracing::debug!("telling systemd: {error}");
    }
}

/// What `systemctl status` shows on its `Status:` line.
fn status_line(status: &DaemonStatus) -> String {
    let applied = match &status.applied_revision {
        Some(revision) => {
            format!("revision {} applied", revision.chars().take(12).collect::<String>())
        }
        None => "no revision applied yet".to_owned(),
    };
    match &status.last_error {
        // One line: a newline would end the datagram's `STATUS=` and start another field.
        Some(error) => format!("{applied}; last run failed: {}", error.replace(['\n', '\r'], " ")),
        None => format!("{applied}; {} services, {} backends", status.services, status.backends),
    }
}
