//! `--only flows`: what the `flows` sock_ops program costs a short TCP connection, by the
//! kernel's run-time statistics (its runs per connection times its time per run), and the
//! connection rate through reconciler with it against without it (its link unpinned, so it
//! is detached), in interleaved rounds at one service.
use anyhow::{Context as _, Result};
use serde_json::{json, Value};

use crate::{
    compiled, dataplane,
    dataplane::{Load, Path, Workload},
    kube::Protocol,
    median, services,
};

pub fn run(rounds: usize, load: Load) -> Result<Value> {
    let services = services(1, 2, Protocol::Tcp);
    let state = compiled(&services)?;
    let workload = Workload::TcpConnections;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Interleaved, each round starting with the other path.
        let order = if round % 2 == 0 {
            [Path::Reconciler, Path::WithoutFlows]
        } else {
            [Path::WithoutFlows, Path::Reconciler]
        };
        for path in order {
            let sample = dataplane::measure(workload, path, &services, &state, load)
                .with_context(|| format!("flows: {}", path.name()))?;
            match path {
                Path::Reconciler => with.push(sample.per_s),
                _ => without.push(sample.per_s),
            }
        }
    }
    let (with, without) = (median(&mut with), median(&mut without));
    let cost_through = |path: Path| -> Result<dataplane::HookCost> {
        let costs = dataplane::hook_costs(workload, path, &services, &state, load)?;
        costs.into_iter().find(|c| c.program == "flows").context("no runs of flows")
    };
    let flows = cost_through(Path::Reconciler)?;
    // Connections not to a VIP: the program returns at once (no record), so its time per run
    // is the floor the statistics themselves put on every run.
    let floor = cost_through(Path::NotAVip)?;
    let per_connection = flows.runs_per_operation * flows.ns_per_run;
    let above_floor = flows.runs_per_operation * (flows.ns_per_run - floor.ns_per_run);
    println!("## The flows program (sock_ops)\n");
    println!(
        "{} client threads, {} ms per measurement, median of {rounds} interleaved rounds, one \
         service.\n",
        load.threads, load.millis
    );
    println!(
        "| with (conn/s) | without (conn/s) | with/without | runs per connection | ns per run \
         | ns per connection | ns per run not to a VIP (runs) | ns per connection above that |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {with:.0} | {without:.0} | {:.3} | {:.2} | {:.0} | {per_connection:.0} | {:.0} ({:.2}) \
         | {above_floor:.0} |\n",
        with / without,
        flows.runs_per_operation,
        flows.ns_per_run,
        floor.ns_per_run,
        floor.runs_per_operation
    );
    Ok(json!({
        "conn_per_s_with": with,
        "conn_per_s_without": without,
        "with_over_without": with / without,
        "runs_per_connection": flows.runs_per_operation,
        "ns_per_run": flows.ns_per_run,
        "ns_per_connection": per_connection,
        "not_a_vip": {"runs_per_connection": floor.runs_per_operation, "ns_per_run": floor.ns_per_run},
        "ns_per_connection_above_floor": above_floor,
    }))
}
