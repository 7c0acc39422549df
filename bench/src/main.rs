//! `make bench`: reconciler against what users run today, measured in one run on one machine.
//!
//!   reconciler-bench [--quick] [--json FILE]
//!                    [--only data|tcp|udp|selection|flows|control|health|flap|scrape|largest|outliers|fleet]
//!
//! Prints Markdown tables and writes every raw figure to FILE (default
//! target/bench/results.json). Every figure is the median of interleaved rounds (A B C D A B
//! C D ...) and is shown with its ratio to a baseline measured in the same run, because these
//! machines are shared and noisy. Everything runs in network namespaces the bench creates and
//! removes; nothing connects outside them.
mod control;
mod daemon;
mod dataplane;
mod flap;
mod fleet;
mod flows;
mod health;
mod kube;
mod largest;
mod memory;
mod outliers;
mod scrape;
mod selection;

use std::{collections::BTreeMap, path::PathBuf, time::Instant};

use anyhow::{bail, Context as _, Result};
use reconciler_core::{
    compile::compile,
    source::{Snapshot, SourceFile},
    state::MapState,
    validate,
};
use serde_json::json;

use dataplane::{Load, Sample, Workload};
use kube::{Protocol, Service};

/// What `--only` takes.
const PARTS: &str =
    "--only data|tcp|udp|selection|flows|control|health|flap|scrape|largest|outliers|fleet";

/// Sizes and repetitions of one run.
struct Plan {
    service_counts: Vec<usize>,
    udp_service_counts: Vec<usize>,
    rounds: usize,
    load: Load,
    control_rounds: usize,
    control_services: usize,
}

fn main() -> Result<()> {
    let mut quick = false;
    let mut json_path = PathBuf::from("target/bench/results.json");
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--json" => json_path = args.next().context("--json FILE")?.into(),
            "--only" => only = Some(args.next().context(PARTS)?),
            _ => bail!("usage: reconciler-bench [--quick] [--json FILE] [{PARTS}]"),
        }
    }
    reconciler_tests::require_root()?;
    let plan = if quick {
        // nft -f of 10 000 services alone takes most of a minute: the quick control plane run
        // uses 2 000.
        Plan {
            service_counts: vec![1, 1000, 10_000],
            udp_service_counts: vec![1, 10_000],
            rounds: 2,
            load: Load { threads: 4, millis: 500 },
            control_rounds: 1,
            control_services: 2000,
        }
    } else {
        Plan {
            service_counts: vec![1, 1000, 10_000],
            udp_service_counts: vec![1, 10_000],
            rounds: 5,
            load: Load { threads: 4, millis: 3000 },
            control_rounds: 3,
            control_services: 10_000,
        }
    };
    let started = Instant::now();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "# reconciler benchmarks ({} run, {cores} cores)\n",
        if quick { "quick" } else { "full" }
    );

    // `data` is the data plane tables; `tcp`, `udp` and `selection` one of them.
    let wanted = |part: &str| {
        only.as_deref().is_none_or(|o| {
            o == part || (o == "data" && ["tcp", "udp", "selection", "flows"].contains(&part))
        })
    };
    let data = if wanted("tcp") {
        data_plane(&plan, Workload::TcpConnections, &plan.service_counts)?
    } else {
        json!(null)
    };
    let udp = if wanted("udp") {
        data_plane(&plan, Workload::UdpRequestResponse, &plan.udp_service_counts)?
    } else {
        json!(null)
    };
    let selection =
        if wanted("selection") { selection::run(plan.rounds, plan.load)? } else { json!(null) };
    let flows = if wanted("flows") { flows::run(plan.rounds, plan.load)? } else { json!(null) };
    let control = if wanted("control") {
        control::run(plan.control_rounds, plan.control_services)?
    } else {
        json!(null)
    };
    if wanted("control") {
        println!("{}", control::table(&control));
    }
    let health = if wanted("health") { health::run(quick)? } else { json!(null) };
    let flap = if wanted("flap") { flap::run(quick)? } else { json!(null) };
    let scrape = if wanted("scrape") { scrape::run(quick)? } else { json!(null) };
    let largest = if wanted("largest") { largest::run(quick)? } else { json!(null) };
    let outliers = if wanted("outliers") { outliers::run(quick)? } else { json!(null) };
    let fleet = if wanted("fleet") { fleet::run(quick)? } else { json!(null) };

    let results = json!({
        "format_version": 2,
        "mode": if quick { "quick" } else { "full" },
        "cores": cores,
        "rounds": plan.rounds,
        "load": {"client_threads": plan.load.threads, "millis_per_measurement": plan.load.millis},
        "data_plane": data,
        "udp_data_plane": udp,
        "selection": selection,
        "flows": flows,
        "control_plane": control,
        "health": health,
        "flap": flap,
        "scrape": scrape,
        "largest": largest,
        "outliers": outliers,
        "fleet": fleet,
        "seconds": started.elapsed().as_secs_f64(),
    });
    if let Some(dir) = json_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&json_path, serde_json::to_string_pretty(&results)?)?;
    println!(
        "Raw figures: {} ({:.0} s in all)",
        json_path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `n` services: fillers (TCP, port 80) with `filler_endpoints` (absent) endpoints each, and
/// last the measured one, of `protocol`, whose endpoints get real servers: TCP port 80 with
/// four endpoints on 127.0.0.2-5:8080; UDP port 53 with one, 127.0.0.2:5353 (through a VIP, an
/// unconnected socket keeps one backend, by a hash of its cookie: with one backend, every path
/// sends every client's datagrams to the same server).
pub fn services(n: usize, filler_endpoints: usize, protocol: Protocol) -> Vec<Service> {
    (0..n)
        .map(|i| {
            let (hi, lo) = (i / 250, i % 250 + 1);
            let vip = format!("10.96.{hi}.{lo}");
            if i + 1 < n {
                let endpoints =
                    (0..filler_endpoints).map(|e| format!("10.{}.{hi}.{lo}:8080", e + 1)).collect();
                return Service { vip, port: 80, protocol: Protocol::Tcp, endpoints };
            }
            match protocol {
                Protocol::Tcp => {
                    let endpoints = (2..6).map(|k| format!("127.0.0.{k}:8080")).collect();
                    Service { vip, port: 80, protocol, endpoints }
                }
                Protocol::Udp => {
                    Service { vip, port: 53, protocol, endpoints: vec!["127.0.0.2:5353".into()] }
                }
            }
        })
        .collect()
}

/// The same services as reconciler definitions, one YAML document each.
pub fn yaml(services: &[Service]) -> String {
    yaml_with(services, "")
}

/// [`yaml`], with `last_spec` (YAML lines of a spec) added to the last service's spec.
fn yaml_with(services: &[Service], last_spec: &str) -> String {
    let mut out = String::new();
    for (i, service) in services.iter().enumerate() {
        out.push_str(&format!(
            "---\napiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {{name: svc-{i}}}\n\
             spec:\n  vip: {}\n  ports: [{{port: {}{}}}]\n  backends:\n",
            service.vip,
            service.port,
            // TCP is the default; left out, the control plane's input stays what it was.
            match service.protocol {
                Protocol::Tcp => "",
                Protocol::Udp => ", protocol: UDP",
            }
        ));
        for endpoint in &service.endpoints {
            let (address, port) = endpoint.rsplit_once(':').unwrap_or((endpoint, "80"));
            out.push_str(&format!("    - {{address: {address}, port: {port}}}\n"));
        }
        if i + 1 == services.len() {
            out.push_str(last_spec);
        }
    }
    out
}

/// Validated and compiled, as the data plane would hold them.
pub fn compiled(services: &[Service]) -> Result<MapState> {
    compiled_with(services, "", &MapState::default())
}

/// [`compiled`], with `last_spec` added to the last service's spec (see [`yaml_with`]),
/// against `live` (so IDs and slots are kept where they can be).
pub fn compiled_with(services: &[Service], last_spec: &str, live: &MapState) -> Result<MapState> {
    let text = yaml_with(services, last_spec);
    let file = SourceFile::new("bench.yaml", text);
    let snapshot = Snapshot { files: vec![file], ..Snapshot::default() };
    let located = validate::validate(&snapshot, &validate::Policy::default())
        .map_err(|d| anyhow::anyhow!("bench definitions invalid: {}", d[0]))?;
    let services: Vec<_> = located.into_iter().map(|l| l.service).collect();
    Ok(compile(&services, live, &live.health_excluded)?)
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// One data plane table: `workload` through each of its paths, at each of `counts` services.
fn data_plane(plan: &Plan, workload: Workload, counts: &[usize]) -> Result<serde_json::Value> {
    let paths = workload.paths();
    let (rate_key, cpu_key, rate_unit, precision) = match workload {
        Workload::TcpConnections => {
            println!("## Data plane: short TCP connections\n");
            ("conn_per_s", "cpu_us_per_connection", "connections/s", 0)
        }
        Workload::UdpRequestResponse => {
            println!("## Data plane: UDP request/response on unconnected sockets\n");
            ("round_trips_per_s", "cpu_us_per_round_trip", "round trips/s", 1)
        }
    };
    println!(
        "{} client threads, {} ms per measurement, median of {} interleaved rounds; \
         {rate_unit} (p50 / p99 latency in µs).\n",
        plan.load.threads, plan.load.millis, plan.rounds
    );
    let direct = paths[0];
    let reconciler = paths[1];
    let ratio = |p: dataplane::Path| format!("{}/{}", reconciler.letter(), p.letter());
    let ratio_key = |p: dataplane::Path| format!("{}_over_{}", reconciler.letter(), p.letter());
    let mut header = String::from("| services |");
    for &p in paths {
        header.push_str(&format!(" ({}) {} |", p.letter(), p.name()));
    }
    for &p in paths.iter().filter(|&&p| p != reconciler) {
        header.push_str(&format!(" {} |", ratio(p)));
    }
    let udp = workload == Workload::UdpRequestResponse;
    if udp {
        // What the per-datagram hooks add to a round trip: to its latency, and in CPU time.
        header.push_str(" b−a p50 µs | b−a CPU µs per round trip |");
    }
    println!("{header}");
    println!("|{}", "---:|".repeat(header.matches(" |").count()));
    let mut rows = Vec::new();
    for &n in counts {
        let services = services(n, 2, workload.protocol());
        let state = compiled(&services)?;
        let mut samples: BTreeMap<&str, Vec<Sample>> = BTreeMap::new();
        for round in 0..plan.rounds {
            // Interleaved, and each round starts with another path.
            for k in 0..paths.len() {
                let path = paths[(round + k) % paths.len()];
                let sample = dataplane::measure(workload, path, &services, &state, plan.load)
                    .with_context(|| format!("{workload:?} {} with {n} services", path.name()))?;
                samples.entry(path.name()).or_default().push(sample);
            }
        }
        let medians: BTreeMap<&str, Sample> = samples
            .iter()
            .map(|(name, s)| {
                let pick = |f: fn(&Sample) -> f64| median(&mut s.iter().map(f).collect::<Vec<_>>());
                let sample = Sample {
                    operations: pick(|s| s.operations),
                    per_s: pick(|s| s.per_s),
                    p50_us: pick(|s| s.p50_us),
                    p99_us: pick(|s| s.p99_us),
                    cpu_us: pick(|s| s.cpu_us),
                };
                (*name, sample)
            })
            .collect();
        let rate = |p: dataplane::Path| medians[p.name()].per_s;
        let mut line = format!("| {n} |");
        for &p in paths {
            let m = medians[p.name()];
            let (rate, p50, p99) = (m.per_s, m.p50_us, m.p99_us);
            line.push_str(&format!(" {rate:.0} ({p50:.precision$} / {p99:.precision$}) |"));
        }
        let mut row = serde_json::Map::new();
        row.insert("services".into(), json!(n));
        for &p in paths.iter().filter(|&&p| p != reconciler) {
            let value = rate(reconciler) / rate(p);
            line.push_str(&format!(" {value:.2} |"));
            row.insert(ratio_key(p), json!(value));
        }
        if udp {
            let latency = medians[reconciler.name()].p50_us - medians[direct.name()].p50_us;
            let cpu = medians[reconciler.name()].cpu_us - medians[direct.name()].cpu_us;
            line.push_str(&format!(" {latency:.1} | {cpu:.2} |"));
            row.insert("b_minus_a_p50_us".into(), json!(latency));
            row.insert("b_minus_a_cpu_us_per_round_trip".into(), json!(cpu));
        }
        println!("{line}");
        let figures = |s: &Sample| json!({rate_key: s.per_s, "p50_us": s.p50_us, "p99_us": s.p99_us, cpu_key: s.cpu_us});
        row.insert(
            "medians".into(),
            medians.iter().map(|(k, s)| (k.to_string(), figures(s))).collect(),
        );
        row.insert(
            "rounds".into(),
            samples
                .iter()
                .map(|(k, s)| (k.to_string(), s.iter().map(figures).collect::<Vec<_>>()))
                .collect(),
        );
        rows.push(serde_json::Value::Object(row));
    }
    println!();
    let largest = *counts.iter().max().context("no service counts")?;
    let services = services(largest, 2, workload.protocol());
    let compiled = compiled(&services)?;
    let mut costs = dataplane::hook_costs(
        workload,
        dataplane::Path::Reconciler,
        &services,
        &compiled,
        plan.load,
    )?;
    // The same programs on traffic that is not to a VIP: what every connect on the node pays,
    // and the floor of what these statistics can show on this machine.
    for mut cost in
        dataplane::hook_costs(workload, dataplane::Path::NotAVip, &services, &compiled, plan.load)?
    {
        cost.program.push_str(", not to a VIP");
        costs.push(cost);
    }
    println!(
        "What reconciler's programs cost (one more measurement through reconciler at {largest} \
         services, and one to the backends themselves with the programs attached, with the \
         kernel's BPF run-time statistics on; they time every run and slow it, so the rates \
         above come from runs without them):\n"
    );
    println!("| program | runs per {} | ns per run |\n|---|---:|---:|", workload.operation());
    for cost in &costs {
        println!("| {} | {:.2} | {:.0} |", cost.program, cost.runs_per_operation, cost.ns_per_run);
    }
    println!();
    let costs: Vec<_> = costs
        .iter()
        .map(|c| json!({"program": c.program, "runs_per_operation": c.runs_per_operation, "ns_per_run": c.ns_per_run}))
        .collect();
    Ok(json!({"rows": rows, "programs": {"services": largest, "costs": costs}}))
}
