//! `reconciler status`: what the live maps say about themselves.
use std::{path::Path, process::ExitCode};

use clap::Args;
use reconciler::{
    clock::rfc3339_utc,
    counters::Counters,
    daemon::{config::DriftMode, status::DaemonStatus},
    dataplane::{
        self, trace::TraceState, Dataplane, Events, Footprint, LiveState, LARGE_HOST_CPUS,
    },
};
use reconciler_common::ExcludedCgroup;
use reconciler_core::state::MapState;
use serde_json::json;

use super::{Output, PinArgs, UNHEALTHY};

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pin: PinArgs,
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Ask a running daemon (its `listen` address) instead of reading the maps.
    #[arg(long, value_name = "HOST:PORT")]
    daemon: Option<String>,
    /// Also show each service's refusals and each backend's translations, by name.
    #[arg(long, conflicts_with = "daemon")]
    counters: bool,
}

pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    if let Some(addr) = &args.daemon {
        return daemon_status(addr, args.output);
    }
    let pin_path = &args.pin.pin_path;
    if !dataplane::is_installed(pin_path) {
        match args.output {
            Output::Text => println!("No data plane is installed at {}.", pin_path.display()),
            Output::Json => println!(
                "{}",
                json!({"format_version": 1, "installed": false, "pin_path": pin_path})
            ),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let report = Report::read(pin_path, args.counters)?;
    match args.output {
        Output::Text => report.print_text(),
        Output::Json => report.print_json()?,
    }
    Ok(ExitCode::SUCCESS)
}

/// What the maps at a pin path say, read once for either output.
struct Report<'a> {
    pin_path: &'a Path,
    live: LiveState,
    events: Events,
    /// Clients holding a backend, per service with affinity, by the service's name.
    affinity: Vec<(String, usize)>,
    /// With `--counters`.
    counters: Option<Counters>,
    /// Each map's capacity, fill and memory.
    footprint: Footprint,
    /// The cgroup subtrees never translated.
    excluded: Vec<ExcludedCgroup>,
    /// Whether the kernel destroys the sockets of removed backends (`None`: the question
    /// failed, as the daemon's start only warns of it).
    socket_destroy: Option<bool>,
    /// Whom the event path is on for.
    trace: TraceState,
}

impl<'a> Report<'a> {
    /// `REVERSE` entries the LRU evicted (see `Events::reverse_evicted`).
    fn reverse_evicted(&self) -> u64 {
        let reverse = self.footprint.maps.iter().find(|m| m.name == "REVERSE");
        self.events.reverse_evicted(reverse.and_then(|m| m.entries).unwrap_or(0))
    }

    fn read(pin_path: &'a Path, with_counters: bool) -> anyhow::Result<Report<'a>> {
        let dataplane = Dataplane::open(pin_path)?;
        let live = dataplane.read_live()?;
        let events = dataplane.events()?;
        let affinity = affinity(&dataplane, &live.state)?;
        let counters = if with_counters {
            Some(reconciler::counters::read(&dataplane, &live.state)?)
        } else {
            None
        };
        let footprint = dataplane.footprint()?;
        let excluded = dataplane.excluded()?;
        let socket_destroy = dataplane::socket_destroy_supported().ok();
        let trace = dataplane::trace::trace_state(pin_path)?;
        Ok(Report {
            pin_path,
            live,
            events,
            affinity,
            counters,
            footprint,
            excluded,
            socket_destroy,
            trace,
        })
    }

    fn print_text(&self) {
        let (status, state, events) = (&self.live.status, &self.live.state, &self.events);
        println!("Data plane:   {} (cgroup id {})", self.pin_path.display(), status.cgroup_id);
        println!("Revision:     {}", status.revision.as_deref().unwrap_or("none applied"));
        println!("Generation:   {}", status.generation);
        match status.applied_at_unix {
            Some(t) => println!("Applied at:   {}", rfc3339_utc(t)),
            None => println!("Applied at:   never"),
        }
        println!(
            "Entries:      {} services, {} backends, {} slots (active set {}{})",
            state.services.len(),
            state.backends.len(),
            state.slots.len(),
            status.active_set,
            if status.standby_dirty { ", standby being repaired" } else { "" }
        );
        println!(
            "Refused:      {} with no backend, {} slot misses, {} backend misses, {} to an \
             unknown port, {} not recordable",
            events.no_backend,
            events.slot_miss,
            events.backend_miss,
            events.unknown_port,
            events.reverse_full
        );
        let evicted = self.reverse_evicted();
        println!(
            "Replies:      {} stale reverse entries dropped, {evicted} evicted by newer ones \
             (the map was full: those sockets' late replies show the backend)",
            events.reverse_stale
        );
        println!(
            "Affinity:     {} hits, {} misses, {} entries dropped",
            events.affinity_hits, events.affinity_misses, events.affinity_dropped
        );
        for (name, clients) in &self.affinity {
            println!("  {name}: {clients} client(s) holding a backend within the timeout");
        }
        let excluded: Vec<String> =
            self.excluded.iter().map(|e| format!("{} (level {})", e.cgroup_id, e.level)).collect();
        if !excluded.is_empty() {
            println!("Excluded:     cgroup subtrees {}", excluded.join(", "));
        }
        if self.socket_destroy.is_none() {
            println!("Sockets:      could not ask the kernel whether it destroys sockets");
        }
        if self.socket_destroy == Some(false) {
            println!(
                "Sockets:      this kernel cannot destroy sockets (no CONFIG_INET_DIAG_DESTROY): \
                 connected UDP sockets of removed backends keep sending to them"
            );
        }
        match self.trace {
            TraceState::Off => {}
            TraceState::Running { pid } => {
                println!("Trace:        on, for the tracer of PID {pid}")
            }
            TraceState::Stale { pid } => println!(
                "Trace:        on for PID {pid}, which no longer runs (killed?): events are \
                 written for nobody until the next `reconciler trace` takes over"
            ),
        }
        print_footprint(&self.footprint);
        if let Some(counters) = &self.counters {
            print_counters(counters);
        }
    }

    fn print_json(&self) -> anyhow::Result<()> {
        let (status, state) = (&self.live.status, &self.live.state);
        let affinity: serde_json::Map<_, _> =
            self.affinity.iter().map(|(name, n)| (name.clone(), json!(n))).collect();
        let report = json!({
            "format_version": 1,
            "installed": true,
            "pin_path": self.pin_path,
            "revision": status.revision,
            "generation": status.generation,
            "applied_at": status.applied_at_unix.map(rfc3339_utc),
            "applied_at_unix": status.applied_at_unix,
            "cgroup_id": status.cgroup_id,
            "active_set": status.active_set,
            "standby_dirty": status.standby_dirty,
            "services": state.services.len(),
            "backends": state.backends.len(),
            "slots": state.slots.len(),
            "events": self.events,
            "reverse_evicted": self.reverse_evicted(),
            "affinity_entries": affinity,
            "counters": self.counters,
            "memory": footprint_json(&self.footprint),
            "socket_destroy_supported": self.socket_destroy,
            "trace": self.trace,
            "excluded": self
                .excluded
                .iter()
                .map(|e| json!({"cgroup_id": e.cgroup_id, "level": e.level}))
                .collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        Ok(())
    }
}

/// Clients holding a backend within the timeout, per service with affinity, by name.
fn affinity(dataplane: &Dataplane, state: &MapState) -> anyhow::Result<Vec<(String, usize)>> {
    let entries = dataplane.affinity_entries(state)?;
    let named = state.services.values().filter(|s| s.affinity_timeout_secs > 0).map(|s| {
        let name = state.names.get(&s.id).cloned().unwrap_or_else(|| format!("#{}", s.id));
        (name, entries.get(&s.id).copied().unwrap_or(0))
    });
    Ok(named.collect())
}

const MIB: f64 = (1 << 20) as f64;

/// Each map's capacity, fill and the kernel memory it locks, here and on a large host.
fn print_footprint(footprint: &Footprint) {
    let (here, large) = (footprint.memory(), footprint.memory_at(LARGE_HOST_CPUS));
    println!(
        "Memory:       {:.1} MiB locked by the maps here ({} possible CPUs), {:.1} MiB with \
         {LARGE_HOST_CPUS}",
        here as f64 / MIB,
        footprint.possible_cpus,
        large as f64 / MIB
    );
    for map in &footprint.maps {
        let fill = match map.entries {
            Some(entries) => format!("{entries} of {}", map.capacity),
            // Socket storage has no capacity: one entry per socket, freed with it.
            None if map.kind == "sk_storage" => "one per socket".to_string(),
            None => format!("{} preallocated", map.capacity),
        };
        let per_cpu = if map.per_cpu { " per CPU" } else { "" };
        println!(
            "  {:<16} {:<13} {:>24}{per_cpu:<8} {:>9.1} MiB",
            map.name,
            map.kind,
            fill,
            map.memory_bytes as f64 / MIB
        );
    }
}

/// The footprint as `status --output json` shows it.
fn footprint_json(footprint: &Footprint) -> serde_json::Value {
    let possible = footprint.possible_cpus;
    let maps: Vec<serde_json::Value> = footprint
        .maps
        .iter()
        .map(|map| {
            let mut value = json!(map);
            value["memory_bytes_at_large_host"] = json!(map.memory_at(LARGE_HOST_CPUS, possible));
            value
        })
        .collect();
    json!({
        "possible_cpus": possible,
        "bytes": footprint.memory(),
        "large_host_cpus": LARGE_HOST_CPUS,
        "bytes_at_large_host": footprint.memory_at(LARGE_HOST_CPUS),
        "maps": maps,
    })
}

/// Counters since each service's and backend's ID was assigned.
fn print_counters(counters: &Counters) {
    println!("Counters (since each ID was assigned):");
    for service in &counters.services {
        println!(
            "  {}: refused {} with no backend, {} by an inconsistent set; {} stale reverse \
             entries",
            service.service,
            service.no_backend,
            service.inconsistent_set,
            service.stale_reverse_entry
        );
        for backend in counters.backends.iter().filter(|b| b.service == service.service) {
            println!(
                "    {} {}: {} connections, {} reverse translations",
                backend.backend,
                backend.protocol,
                backend.connections,
                backend.reverse_translations
            );
            if let Some(f) = &backend.flows {
                println!(
                    "      {} established (mean handshake {} µs), {} failed; {} closed: {} B \
                     sent, {} B received, mean RTT {} µs",
                    f.established,
                    f.mean_handshake_us,
                    f.failed,
                    f.closed,
                    f.bytes_sent,
                    f.bytes_received,
                    f.mean_rtt_us
                );
            }
        }
    }
}

/// The daemon's `/status`, as JSON or as text; exits 2 unless it is ready and its last run
/// succeeded.
fn daemon_status(addr: &str, output: Output) -> anyhow::Result<ExitCode> {
    let (code, body) = reconciler::daemon::http::request(addr, "GET", "/status")
        .map_err(|e| anyhow::anyhow!("asking the daemon at {addr}: {e}"))?;
    anyhow::ensure!(code == 200, "the daemon at {addr} answered {code}: {body}");
    let status: DaemonStatus = serde_json::from_str(&body).map_err(|e| {
        anyhow::anyhow!("the daemon at {addr} sent a /status this build cannot read: {e}")
    })?;
    let healthy = status.ready && status.last_error.is_none();
    let code = if healthy { ExitCode::SUCCESS } else { ExitCode::from(UNHEALTHY) };
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(code);
    }
    print_daemon_status(addr, &status);
    Ok(code)
}

fn print_daemon_status(addr: &str, status: &DaemonStatus) {
    let or_dash = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".to_owned());
    println!("Daemon:             {addr} ({})", if status.ready { "ready" } else { "not ready" });
    println!("Source:             {}", status.source);
    println!(
        "Applied revision:   {} at {}",
        or_dash(&status.applied_revision),
        or_dash(&status.applied_at)
    );
    println!(
        "Attempted revision: {} at {}",
        or_dash(&status.attempted_revision),
        or_dash(&status.attempted_at)
    );
    println!("Last error:         {}", or_dash(&status.last_error));
    for error in &status.errors {
        println!("  {error}");
    }
    let drift = match status.drift {
        DriftMode::Heal => "heal",
        DriftMode::Report => "report",
    };
    println!("Drift:              {} entries ({drift})", status.drift_entries);
    println!(
        "Entries:            {} services, {} backends; generation {}",
        status.services, status.backends, status.generation
    );
    println!("Last plan read:     {}", status.last_plan.as_deref().unwrap_or("-"));
    if !status.health.is_empty() {
        println!("Health:");
    }
    for service in &status.health_failing_open {
        println!("  {service}: every backend fails its health check; all kept (fail open)");
    }
    for backend in &status.health {
        println!(
            "  {} {}{}{} ({})",
            backend.backend,
            if backend.up { "up" } else { "DOWN" },
            backend.since.as_ref().map_or(String::new(), |t| format!(" since {t}")),
            backend.last_error.as_ref().map_or(String::new(), |e| format!("; last error: {e}")),
            backend.services.join(", ")
        );
    }
    print_ejections(status);
    print_rollout(status);
    if !status.slow_start.is_empty() {
        println!("Slow start:");
    }
    for ramp in &status.slow_start {
        let (backend, service, until) = (ramp.backend, &ramp.service, &ramp.until);
        println!(
            "  {backend} ({service}) at {}% of its weight, all of it at {until}",
            ramp.percent
        );
    }
}

/// Outlier detection's part of `status --daemon`.
fn print_ejections(status: &DaemonStatus) {
    if !status.ejections.is_empty() || !status.ejections_failing_open.is_empty() {
        println!("Ejections:");
    }
    for service in &status.ejections_failing_open {
        println!("  {service}: more backends fail than maxEjectionPercent lets out (fail open)");
    }
    for e in &status.ejections {
        let now = match &e.until {
            Some(until) if e.ejected => format!("EJECTED until {until}"),
            _ => "back".to_owned(),
        };
        println!(
            "  {} {now} ({}); ejected {} times, last at {} after {} failed connects in a row",
            e.backend, e.service, e.ejections, e.ejected_at, e.failures
        );
    }
}

/// The rollout under way and how the last one ended, in `status --daemon`.
fn print_rollout(status: &DaemonStatus) {
    if let Some(rollout) = &status.rollout {
        println!(
            "Rollout:            {} from {} since {}",
            rollout.revision, rollout.previous, rollout.started_at
        );
        for s in &rollout.services {
            println!(
                "  {}: step {} of {}, {}% of new connections to the new backends since {}; \
                 this step {} established, {} failed",
                s.service,
                s.step,
                s.steps.len(),
                s.percent,
                s.step_started_at,
                s.established,
                s.failed
            );
        }
    }
    if let Some(last) = &status.last_rollout {
        let why = last.reason.as_ref().map_or(String::new(), |r| format!(": {r}"));
        println!("Last rollout:       {} {} at {}{why}", last.revision, last.result, last.at);
    }
}
