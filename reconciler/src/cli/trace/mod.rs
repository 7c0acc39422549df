//! `reconciler trace`: the data plane's translations as they happen, one line (or JSON object)
//! each, until Ctrl-C (or SIGTERM, SIGHUP, or its reader going away: `| head`).
use std::{
    io::Write as _,
    net::IpAddr,
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use clap::Args;
use reconciler::dataplane::{
    trace::{Event, Tracer},
    Dataplane,
};
use reconciler_core::state::split_label;

use super::{Output, PinArgs};
use exclusions::{ExclusionChange, Exclusions};

mod exclusions;

#[derive(Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pin: PinArgs,
    /// Only this service's events (its name, or `name/port`).
    #[arg(long)]
    service: Option<String>,
    /// Only events of this VIP (`IP` or `IP:PORT`).
    #[arg(long)]
    vip: Option<String>,
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// Set by SIGINT, SIGTERM, SIGHUP or a closed stdout: the loop ends, and the tracer clears
/// its flag on the way out.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub fn run(args: TraceArgs) -> anyhow::Result<ExitCode> {
    let pin_path = &args.pin.pin_path;
    let vip = args.vip.as_deref().map(parse_vip).transpose()?;
    let mut names = Dataplane::open(pin_path)?.read_live()?.state.names;
    // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, stop as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, stop as *const () as libc::sighandler_t);
        libc::signal(libc::SIGHUP, stop as *const () as libc::sighandler_t);
    }
    let mut tracer = Tracer::start(pin_path)?;
    let dropped_at_start = tracer.dropped()?;
    eprintln!("Tracing {} (Ctrl-C ends).", pin_path.display());
    let mut exclusions = Exclusions::start(pin_path)?;
    while !STOP.load(Ordering::SeqCst) {
        for change in exclusions.changes(pin_path) {
            if wanted_service(&args, &change.service) && print_exclusion(&args.output, &change)? {
                STOP.store(true, Ordering::SeqCst);
            }
        }
        let mut poll = libc::pollfd { fd: tracer.raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd, owned for the call. A signal ends it early (EINTR), as wanted.
        unsafe { libc::poll(&mut poll, 1, Duration::from_millis(250).as_millis() as i32) };
        for event in tracer.drain() {
            if !names.contains_key(&event.service_id) {
                // A service applied since we started: its name is new.
                if let Ok(live) = Dataplane::open(pin_path).and_then(|d| d.read_live()) {
                    names = live.state.names;
                }
            }
            let service = names.get(&event.service_id).cloned().unwrap_or_default();
            if wanted(&args, vip, &event, &service) && print(&args.output, &event, &service)? {
                // The reader went away (`| head`): the end, as for Ctrl-C.
                STOP.store(true, Ordering::SeqCst);
            }
        }
    }
    let dropped = tracer.dropped()? - dropped_at_start;
    drop(tracer);
    if dropped > 0 {
        eprintln!("{dropped} events were dropped (the ring was full).");
    }
    Ok(ExitCode::SUCCESS)
}

/// `IP` or `IP:PORT` (IPv6 with a port in brackets).
fn parse_vip(text: &str) -> anyhow::Result<(IpAddr, Option<u16>)> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok((ip.to_canonical(), None));
    }
    let addr: std::net::SocketAddr =
        text.parse().map_err(|_| anyhow::anyhow!("--vip {text}: not an IP or IP:PORT"))?;
    Ok((addr.ip().to_canonical(), Some(addr.port())))
}

fn wanted_service(args: &TraceArgs, service: &str) -> bool {
    args.service.as_deref().is_none_or(|wanted| {
        service == wanted || split_label(service).is_some_and(|(name, _)| name == wanted)
    })
}

fn wanted(
    args: &TraceArgs,
    vip: Option<(IpAddr, Option<u16>)>,
    event: &Event,
    service: &str,
) -> bool {
    let service_ok = wanted_service(args, service);
    let vip_ok = vip.is_none_or(|(ip, port)| {
        event.vip.ip() == ip && port.is_none_or(|p| p == event.vip.port())
    });
    service_ok && vip_ok
}

/// Writes `change`; whether stdout is closed (its reader gone).
fn print_exclusion(output: &Output, change: &ExclusionChange) -> anyhow::Result<bool> {
    let time = reconciler::clock::now_rfc3339();
    let line = match output {
        Output::Json => {
            let mut value = serde_json::to_value(change)?;
            if let Some(object) = value.as_object_mut() {
                object.insert("time".into(), time.into());
            }
            value.to_string()
        }
        Output::Text => {
            let why = match (change.event, change.failures) {
                ("ejected", Some(failures)) => {
                    format!(": outlier detection, {failures} connects failed in a row")
                }
                ("excluded", _) => ": its health check fails".to_owned(),
                ("ramping", _) => ": slow start, it joined".to_owned(),
                _ => String::new(),
            };
            format!("{time} {} {} {}{why}", change.service, change.backend, change.event)
        }
    };
    write_line(&line)
}

/// Writes `event`; whether stdout is closed (its reader gone), which ends the trace.
fn print(output: &Output, event: &Event, service: &str) -> anyhow::Result<bool> {
    let time = reconciler::clock::monotonic_to_rfc3339(event.monotonic_ns);
    let line = match output {
        Output::Json => {
            let mut value = serde_json::to_value(event)?;
            if let Some(object) = value.as_object_mut() {
                object.insert("time".into(), time.into());
                object.insert("service".into(), service.into());
            }
            value.to_string()
        }
        Output::Text => {
            let target = match (event.backend, event.reason) {
                (Some(backend), _) => backend.to_string(),
                (None, reason) => format!("refused ({})", reason.unwrap_or("?")),
            };
            format!(
                "{time} pid {} ({}) cgroup {} {} {} -> {target} {service} {}",
                event.pid, event.comm, event.cgroup_id, event.protocol, event.vip, event.event
            )
        }
    };
    write_line(&line)
}

/// Writes `line` to stdout; whether stdout is closed (its reader gone).
fn write_line(line: &str) -> anyhow::Result<bool> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(true),
        Err(e) => Err(e.into()),
    }
}
