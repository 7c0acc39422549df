//! `make bench`: reconciler against what users run today, measured in one run on one machine.
//!
//!   reconciler-bench [--quick] [--json FILE] [--only data|control]
//!
//! Prints Markdown tables and writes every raw figure to FILE (default
//! target/bench/results.json). Every figure is the median of interleaved rounds (A B C D A B
//! C D ...) and is shown with its ratio to a baseline measured in the same run, because these
//! machines are shared and noisy. Everything runs in network namespaces the bench creates and
//! removes; nothing connects outside them.
mod control;
mod dataplane;
mod kube;

use std::{collections::BTreeMap, path::PathBuf, time::Instant};

use anyhow::{bail, Context as _, Result};
use reconciler::{
    compile::compile,
    dataplane::MapState,
    source::{Snapshot, SourceFile},
    validate,
};
use serde_json::json;

use dataplane::{Load, Path, Sample};
use kube::Service;

/// Sizes and repetitions of one run.
struct Plan {
    service_counts: Vec<usize>,
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
            "--only" => only = Some(args.next().context("--only data|control")?),
            _ => bail!("usage: reconciler-bench [--quick] [--json FILE] [--only data|control]"),
        }
    }
    reconciler_tests::require_root()?;
    let plan = if quick {
        // nft -f of 10 000 services alone takes most of a minute: the quick control plane run
        // uses 2 000.
        Plan {
            service_counts: vec![1, 1000, 10_000],
            rounds: 2,
            load: Load { threads: 4, millis: 500 },
            control_rounds: 1,
            control_services: 2000,
        }
    } else {
        Plan {
            service_counts: vec![1, 1000, 10_000],
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

    let wanted = |part: &str| only.as_deref().is_none_or(|o| o == part);
    let data = if wanted("data") { data_plane(&plan)? } else { json!(null) };
    let control = if wanted("control") {
        control::run(plan.control_rounds, plan.control_services)?
    } else {
        json!(null)
    };
    if wanted("control") {
        println!("{}", control::table(&control));
    }

    let results = json!({
        "format_version": 1,
        "mode": if quick { "quick" } else { "full" },
        "cores": cores,
        "rounds": plan.rounds,
        "load": {"client_threads": plan.load.threads, "millis_per_measurement": plan.load.millis},
        "data_plane": data,
        "control_plane": control,
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

/// `n` TCP services on port 80: fillers with two (absent) endpoints each, and last the measured
/// one, whose four endpoints on 127.0.0.2-5 get real listeners.
pub fn services(n: usize, filler_endpoints: usize) -> Vec<Service> {
    (0..n)
        .map(|i| {
            let (hi, lo) = (i / 250, i % 250 + 1);
            let endpoints = if i + 1 == n {
                (2..6).map(|k| format!("127.0.0.{k}:8080")).collect()
            } else {
                (0..filler_endpoints).map(|e| format!("10.{}.{hi}.{lo}:8080", e + 1)).collect()
            };
            Service { vip: format!("10.96.{hi}.{lo}"), port: 80, endpoints }
        })
        .collect()
}

/// The same services as reconciler definitions, one YAML document each.
pub fn yaml(services: &[Service]) -> String {
    let mut out = String::new();
    for (i, service) in services.iter().enumerate() {
        out.push_str(&format!(
            "---\napiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {{name: svc-{i}}}\n\
             spec:\n  vip: {}\n  ports: [{{port: {}}}]\n  backends:\n",
            service.vip, service.port
        ));
        for endpoint in &service.endpoints {
            let (address, port) = endpoint.rsplit_once(':').unwrap_or((endpoint, "80"));
            out.push_str(&format!("    - {{address: {address}, port: {port}}}\n"));
        }
    }
    out
}

/// Validated and compiled, as the data plane would hold them.
fn compiled(services: &[Service]) -> Result<MapState> {
    let text = yaml(services);
    let file = SourceFile { path: "bench.yaml".into(), text };
    let snapshot = Snapshot { files: vec![file], ..Snapshot::default() };
    let located = validate::validate(&snapshot, &validate::Policy::default())
        .map_err(|d| anyhow::anyhow!("bench definitions invalid: {}", d[0]))?;
    let services: Vec<_> = located.into_iter().map(|l| l.service).collect();
    Ok(compile(&services, &MapState::default())?)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

fn data_plane(plan: &Plan) -> Result<serde_json::Value> {
    println!("## Data plane: short TCP connections\n");
    println!(
        "{} client threads, {} ms per measurement, median of {} interleaved rounds; \
         connections/s (p50 / p99 latency in µs).\n",
        plan.load.threads, plan.load.millis, plan.rounds
    );
    println!("| services | (a) direct | (b) reconciler | (c) iptables | (d) nftables | b/a | b/c | b/d |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for &n in &plan.service_counts {
        let services = services(n, 2);
        let state = compiled(&services)?;
        let mut samples: BTreeMap<&str, Vec<Sample>> = BTreeMap::new();
        for round in 0..plan.rounds {
            // Interleaved, and each round starts with another path.
            for k in 0..Path::ALL.len() {
                let path = Path::ALL[(round + k) % Path::ALL.len()];
                let sample = dataplane::measure(path, &services, &state, plan.load)
                    .with_context(|| format!("{} with {n} services", path.name()))?;
                samples.entry(path.name()).or_default().push(sample);
            }
        }
        let medians: BTreeMap<&str, (f64, f64, f64)> = samples
            .iter()
            .map(|(name, s)| {
                let pick = |f: fn(&Sample) -> f64| median(&mut s.iter().map(f).collect::<Vec<_>>());
                (*name, (pick(|s| s.conn_per_s), pick(|s| s.p50_us), pick(|s| s.p99_us)))
            })
            .collect();
        let cell = |name: &str| {
            let (rate, p50, p99) = medians[name];
            format!("{rate:.0} ({p50:.0} / {p99:.0})")
        };
        let rate = |name: &str| medians[name].0;
        println!(
            "| {n} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} |",
            cell("direct"),
            cell("reconciler"),
            cell("iptables"),
            cell("nftables"),
            rate("reconciler") / rate("direct"),
            rate("reconciler") / rate("iptables"),
            rate("reconciler") / rate("nftables"),
        );
        rows.push(json!({
            "services": n,
            "medians": medians.iter().map(|(k, (r, p50, p99))| (k.to_string(), json!({"conn_per_s": r, "p50_us": p50, "p99_us": p99}))).collect::<serde_json::Map<_, _>>(),
            "rounds": samples.iter().map(|(k, s)| (k.to_string(), json!(s.iter().map(|s| json!({"conn_per_s": s.conn_per_s, "p50_us": s.p50_us, "p99_us": s.p99_us})).collect::<Vec<_>>()))).collect::<serde_json::Map<_, _>>(),
            "b_over_a": rate("reconciler") / rate("direct"),
            "b_over_c": rate("reconciler") / rate("iptables"),
            "b_over_d": rate("reconciler") / rate("nftables"),
        }));
    }
    println!();
    Ok(json!(rows))
}
