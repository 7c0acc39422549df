//! `reconciler fleet`: which node runs which revision, and which are in trouble, as the
//! Prometheus that scrapes every daemon sees it (`reconciler::fleet::view`).
use std::{fmt::Write as _, process::ExitCode, time::Duration};

use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;

use super::{Output, UNHEALTHY};
use reconciler::fleet::{
    prometheus::Prometheus,
    view::{Fleet, NodeView},
};

#[derive(Args)]
pub struct FleetArgs {
    /// The Prometheus server that scrapes the daemons (http://prometheus:9090).
    #[arg(long, value_name = "URL")]
    prometheus: String,
    /// A node that reported within this window and no longer does is listed as unreachable
    /// (a PromQL duration: 30m, 1h, 1d).
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    window: String,
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// Exits 0 when no node is stuck, 2 when one is (unreachable, not ready, failing or
/// drifting), 1 when Prometheus gives no answer or knows no daemon.
pub fn run(args: FleetArgs) -> Result<ExitCode> {
    let prometheus = Prometheus::new(&args.prometheus, Duration::from_secs(30));
    let fleet = Fleet::read(&prometheus, &args.window)?;
    if fleet.nodes.is_empty() {
        bail!(
            "Prometheus at {} shows no reconciler daemon within {} (no reconciler_node_info): \
             does it scrape them?",
            prometheus.url(),
            args.window
        );
    }
    let stuck: Vec<&str> =
        fleet.nodes.iter().filter(|n| !n.stuck().is_empty()).map(|n| n.node.as_str()).collect();
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&as_json(&fleet, &stuck))?),
        Output::Text => print!("{}", text(&fleet, prometheus.url(), &stuck)),
    }
    Ok(if stuck.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(UNHEALTHY) })
}

fn as_json(fleet: &Fleet, stuck: &[&str]) -> serde_json::Value {
    let revisions: Vec<_> = fleet
        .by_revision()
        .into_iter()
        .map(|(revision, nodes)| {
            let names: Vec<&str> = nodes.iter().map(|n| n.node.as_str()).collect();
            json!({"revision": revision, "count": names.len(), "nodes": names})
        })
        .collect();
    let nodes: Vec<_> = fleet
        .nodes
        .iter()
        .map(|node| {
            let mut value = json!(node);
            value["stuck"] = json!(node.stuck());
            value
        })
        .collect();
    json!({"at": fleet.at, "revisions": revisions, "nodes": nodes, "stuck": stuck})
}

/// The fleet as people read it: each revision, its nodes by wave and those of them in each
/// kind of trouble; then who is stuck.
fn text(fleet: &Fleet, url: &str, stuck: &[&str]) -> String {
    let mut out = String::new();
    let revisions = fleet.by_revision();
    let _ = writeln!(
        out,
        "{} in {} ({url})\n",
        count(fleet.nodes.len(), "node"),
        count(revisions.len(), "revision"),
    );
    for (revision, nodes) in &revisions {
        let mut waves: std::collections::BTreeMap<u32, usize> = Default::default();
        for node in nodes {
            *waves.entry(node.wave).or_default() += 1;
        }
        let waves: Vec<String> = waves.iter().map(|(w, n)| format!("wave {w}: {n}")).collect();
        let head = revision.map_or("No revision yet".to_owned(), |r| format!("Revision {r}"));
        let _ = writeln!(out, "{head}: {} ({})", count(nodes.len(), "node"), waves.join(", "));
        for (title, detail) in TROUBLES {
            let listed: Vec<String> = nodes.iter().copied().filter_map(detail).collect();
            if !listed.is_empty() {
                let _ = writeln!(out, "  {title}: {}", listed.join(", "));
            }
        }
    }
    out.push('\n');
    match stuck {
        [] => out.push_str("No node is stuck.\n"),
        _ => {
            let _ = writeln!(out, "{} stuck: {}", count(stuck.len(), "node"), stuck.join(", "));
        }
    }
    out
}

type Detail = fn(&NodeView) -> Option<String>;

/// Each kind of trouble a node may show, and how a node with it is listed.
const TROUBLES: [(&str, Detail); 7] = [
    ("Unreachable", |n| (!n.reachable).then(|| format!("{} ({})", n.node, n.instance))),
    ("Not ready", |n| (n.reachable && !n.ready).then(|| n.node.clone())),
    ("Failing", |n| Some(format!("{} (refused {})", n.node, n.failed_revision.as_deref()?))),
    ("Drifting", |n| {
        (n.drift_entries > 0).then(|| format!("{} ({} entries)", n.node, n.drift_entries))
    }),
    ("Failing open", |n| {
        (n.failing_open > 0)
            .then(|| format!("{} ({})", n.node, count(n.failing_open as usize, "service")))
    }),
    ("Ejecting", |n| {
        (n.ejected_backends > 0).then(|| {
            format!("{} ({} ejected)", n.node, count(n.ejected_backends as usize, "backend"))
        })
    }),
    ("Waiting", |n| {
        Some(format!("{} (wave {}) for {}", n.node, n.wave, n.waiting_for.as_deref()?))
    }),
];

fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, wave: u32, revision: Option<&str>) -> NodeView {
        NodeView {
            node: name.into(),
            instance: format!("{name}:9469"),
            wave,
            reachable: true,
            ready: true,
            revision: revision.map(str::to_owned),
            ..NodeView::default()
        }
    }

    #[test]
    fn the_text_lists_revisions_then_troubles_then_who_is_stuck() {
        let fleet = Fleet {
            at: 0.0,
            nodes: vec![
                NodeView { revision_since: Some(20.0), ..node("a", 1, Some("r2")) },
                NodeView { failing_open: 1, ejected_backends: 3, ..node("b", 1, Some("r2")) },
                NodeView { revision_since: Some(10.0), ..node("c", 2, Some("r1")) },
                NodeView { failed_revision: Some("r2".into()), ..node("d", 2, Some("r1")) },
                NodeView { waiting_for: Some("r2".into()), ..node("f", 2, Some("r1")) },
                NodeView { reachable: false, ready: false, ..node("e", 3, None) },
            ],
        };
        let stuck = ["d", "e"];
        assert_eq!(
            text(&fleet, "http://p:9090", &stuck),
            "6 nodes in 3 revisions (http://p:9090)\n\n\
             Revision r2: 2 nodes (wave 1: 2)\n  \
               Failing open: b (1 service)\n  \
               Ejecting: b (3 backends ejected)\n\
             Revision r1: 3 nodes (wave 2: 3)\n  \
               Failing: d (refused r2)\n  \
               Waiting: f (wave 2) for r2\n\
             No revision yet: 1 node (wave 3: 1)\n  \
               Unreachable: e (e:9469)\n\n\
             2 nodes stuck: d, e\n"
        );
        let value = as_json(&fleet, &stuck);
        assert_eq!(value["revisions"][2]["revision"], serde_json::Value::Null);
        assert_eq!(value["nodes"][3]["stuck"], json!(["failing"]));
    }
}
