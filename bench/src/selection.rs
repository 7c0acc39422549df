//! Backend selection: short TCP connections through reconciler to a service of one backend,
//! the backend chosen at random (the baseline), by Maglev (a hash of the client's cgroup and
//! one table lookup), and with session affinity (an LRU entry read and renewed per connect).
//! One backend, so every variant sends every connection to the same listener and only the
//! choosing differs. Then what a one-backend change costs in a 10-backend Maglev service.
use std::{collections::BTreeMap, time::Instant};

use anyhow::{Context as _, Result};
use reconciler::dataplane::{ApplyTo, Dataplane};
use reconciler_core::state::MapState;
use reconciler_tests::Sandbox;
use serde_json::{json, Value};

use crate::{
    compiled_with,
    dataplane::{self, Load, Path, Sample, Workload},
    kube::{Protocol, Service},
    median,
};

/// Each variant's name and the spec lines that select it.
const VARIANTS: [(&str, &str); 4] = [
    ("random", ""),
    ("maglev", "  loadBalancing: {algorithm: maglev}\n"),
    ("random + affinity", "  sessionAffinity: {timeoutSeconds: 300}\n"),
    (
        "maglev + affinity",
        "  loadBalancing: {algorithm: maglev}\n  sessionAffinity: {timeoutSeconds: 300}\n",
    ),
];

const MAGLEV: &str = "  loadBalancing: {algorithm: maglev}\n";

/// The row of random with `reconciler trace` reading every event.
const TRACED: &str = "random, traced";

pub fn run(rounds: usize, load: Load) -> Result<Value> {
    println!("## Data plane: backend selection\n");
    println!(
        "Short TCP connections through reconciler to a service of one backend; {} client \
         threads, {} ms per measurement, median of {rounds} interleaved rounds. Connections/s \
         (p50 / p99 latency in µs), and the ratio to random.\n",
        load.threads, load.millis
    );
    let one = [Service {
        vip: "10.96.0.1".into(),
        port: 80,
        protocol: Protocol::Tcp,
        endpoints: vec!["127.0.0.2:8080".into()],
    }];
    let states: Vec<MapState> = VARIANTS
        .iter()
        .map(|(_, spec)| compiled_with(&one, spec, &MapState::default()))
        .collect::<Result<_>>()?;
    let mut samples: BTreeMap<&str, Vec<Sample>> = BTreeMap::new();
    for round in 0..rounds {
        // Random with a tracer attached, in each round beside the rest.
        let traced = dataplane::measure_traced(Workload::TcpConnections, &one, &states[0], load)
            .context("random with a tracer")?;
        samples.entry(TRACED).or_default().push(traced);
        for k in 0..VARIANTS.len() {
            let index = (round + k) % VARIANTS.len();
            let sample = dataplane::measure(
                Workload::TcpConnections,
                Path::Reconciler,
                &one,
                &states[index],
                load,
            )
            .with_context(|| format!("selection {}", VARIANTS[index].0))?;
            samples.entry(VARIANTS[index].0).or_default().push(sample);
        }
    }
    let pick = |name: &str, f: fn(&Sample) -> f64| {
        median(&mut samples[name].iter().map(f).collect::<Vec<_>>())
    };
    // What connect4 itself costs with each variant, by the kernel's BPF run-time statistics:
    // not swayed by the machine's noise, which moves whole rounds by several percent.
    let connect_ns: Vec<f64> = states
        .iter()
        .map(|state| {
            let costs = dataplane::hook_costs(
                Workload::TcpConnections,
                Path::Reconciler,
                &one,
                state,
                load,
            )?;
            let connect = costs.iter().find(|c| c.program == "connect4");
            Ok(connect.context("connect4 did not run")?.ns_per_run)
        })
        .collect::<Result<_>>()?;
    println!(
        "| selection | connections/s (p50 / p99) | ratio to random | connect4 ns per run |\n\
         |---|---:|---:|---:|"
    );
    let random = pick("random", |s| s.per_s);
    let mut rows = Vec::new();
    for ((name, _), ns) in VARIANTS.iter().zip(&connect_ns) {
        let name = *name;
        let (rate, p50, p99) =
            (pick(name, |s| s.per_s), pick(name, |s| s.p50_us), pick(name, |s| s.p99_us));
        println!("| {name} | {rate:.0} ({p50:.0} / {p99:.0}) | {:.2} | {ns:.0} |", rate / random);
        let rounds: Vec<f64> = samples[name].iter().map(|s| s.per_s).collect();
        rows.push(json!({"selection": name, "conn_per_s": rate, "p50_us": p50, "p99_us": p99,
                         "ratio_to_random": rate / random, "conn_per_s_rounds": rounds,
                         "connect4_ns_per_run": ns}));
    }
    let (rate, p50, p99) =
        (pick(TRACED, |s| s.per_s), pick(TRACED, |s| s.p50_us), pick(TRACED, |s| s.p99_us));
    println!("| {TRACED} | {rate:.0} ({p50:.0} / {p99:.0}) | {:.2} | |", rate / random);
    rows.push(json!({"selection": TRACED, "conn_per_s": rate, "p50_us": p50, "p99_us": p99,
                     "ratio_to_random": rate / random}));
    println!();
    let change = one_backend_change(rounds)?;
    Ok(json!({"rows": rows, "one_backend_change": change}))
}

/// A 10-backend service, Maglev with its default table (1601 slots) and random for
/// comparison: in process, the applies that replace one backend and put it back, and that
/// remove one and add it back, each compiled against the live state; map writes and
/// milliseconds (median of `rounds`).
fn one_backend_change(rounds: usize) -> Result<Value> {
    println!(
        "One backend of a 10-backend service replaced (and put back), or removed (and added \
         back): the apply of the compiled change, in process, median of {rounds} rounds. \
         Maglev's default table here is 1601 slots.\n"
    );
    println!("| algorithm | change | map writes | ms |\n|---|---|---:|---:|");
    let ten: Vec<String> = (1..=10).map(|i| format!("10.1.0.{i}:8080")).collect();
    let mut replaced = ten.clone();
    replaced[0] = "10.1.0.99:8080".into();
    let service = |endpoints: &[String]| {
        [Service {
            vip: "10.96.0.1".into(),
            port: 80,
            protocol: Protocol::Tcp,
            endpoints: endpoints.to_vec(),
        }]
    };
    let mut table = Vec::new();
    for (algorithm, spec) in [("maglev", MAGLEV), ("random", "")] {
        let sandbox = Sandbox::new("bench-selection")?;
        let mut dataplane = Dataplane::install(sandbox.pin_path(), sandbox.cgroup())?;
        let full = compiled_with(&service(&ten), spec, &MapState::default())?;
        dataplane.apply(&full, ApplyTo::default())?;
        let mut figures: Vec<(&str, Vec<f64>, usize)> = Vec::new();
        let mut live = full;
        for _ in 0..rounds {
            let changes = [
                ("replace one", &replaced[..]),
                ("put it back", &ten[..]),
                ("remove one", &ten[1..]),
                ("add it back", &ten[..]),
            ];
            for (change, endpoints) in changes {
                let desired = compiled_with(&service(endpoints), spec, &live)?;
                let started = Instant::now();
                let report = dataplane.apply(&desired, ApplyTo::default())?;
                let millis = started.elapsed().as_secs_f64() * 1000.0;
                match figures.iter_mut().find(|(name, ..)| *name == change) {
                    Some((_, all, _)) => all.push(millis),
                    None => figures.push((change, vec![millis], report.map_writes)),
                }
                live = desired;
            }
        }
        for (change, mut millis, writes) in figures {
            let ms = median(&mut millis);
            println!("| {algorithm} | {change} | {writes} | {ms:.1} |");
            table.push(
                json!({"algorithm": algorithm, "change": change, "map_writes": writes, "ms": ms}),
            );
        }
    }
    println!();
    Ok(json!(table))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant carries connections, and the change table has its rows (a variant that
    /// failed would make its ratio meaningless).
    #[test]
    fn every_selection_carries_connections_and_every_change_applies() -> Result<()> {
        let result = run(1, Load { threads: 2, millis: 200 })?;
        let rows = result["rows"].as_array().context("rows")?;
        assert_eq!(rows.len(), VARIANTS.len() + 1);
        for row in rows {
            assert!(row["conn_per_s"].as_f64().unwrap_or(0.0) > 100.0, "{row}");
        }
        let changes = result["one_backend_change"].as_array().context("changes")?;
        assert_eq!(changes.len(), 8, "{changes:?}");
        Ok(())
    }
}
