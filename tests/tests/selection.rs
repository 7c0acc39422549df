//! Backend selection in the real kernel: weights, session affinity, Maglev and backend states,
//! applied from commits of a real repository by the real `reconciler` binary, seen by many
//! clients (child cgroups of the sandbox's: one client each) connecting to real listeners.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::PathBuf,
    time::Duration,
};

use anyhow::{ensure, Context as _, Result};
use reconciler::dataplane::Dataplane;
use reconciler_common::maglev;
use reconciler_tests::{gitops::Setup, wait_for, ClientReplies};
use serde_json::Value;

const VIP: &str = "10.96.0.10:80";

/// Backend `i`'s address (its listener answers `b{i}`).
fn address(i: usize) -> String {
    format!("127.0.0.{}", 10 + i)
}

/// Starts listeners for backends `range` on port 8080.
fn serve(setup: &mut Setup, range: std::ops::RangeInclusive<usize>) -> Result<()> {
    for i in range {
        setup.sandbox.serve_tcp(&format!("{}:8080", address(i)), &format!("b{i}"))?;
    }
    Ok(())
}

/// Service `web` on `VIP` (port `http`) with one backend line per `(i, fields)` (fields such
/// as `weight: 3` or `state: draining`, may be empty) and `spec` lines appended to the spec.
fn web(backends: &[(usize, &str)], spec: &str) -> String {
    let mut text = String::from(
        "apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\nspec:\n  \
         vip: 10.96.0.10\n  ports: [{name: http, port: 80, targetPort: 8080}]\n  backends:\n",
    );
    for (i, fields) in backends {
        let fields = if fields.is_empty() { String::new() } else { format!(", {fields}") };
        text.push_str(&format!("    - {{address: {}{fields}}}\n", address(*i)));
    }
    text.push_str(spec);
    text
}

/// Commits `text` as the service and applies it; returns the apply's output.
fn commit_and_apply(setup: &Setup, text: &str, message: &str) -> Result<String> {
    setup.repo.write("services/web.yaml", text);
    setup.repo.commit(message);
    setup.expect(0, "apply", &[])
}

/// The one backend each client reached, by cgroup ID; fails if a client reached several or
/// none.
fn one_backend_each(clients: &[ClientReplies]) -> Result<BTreeMap<u64, String>> {
    clients
        .iter()
        .map(|client| {
            let seen: BTreeSet<&String> = client.replies.iter().collect();
            ensure!(seen.len() == 1, "client {} reached {seen:?}", client.cgroup_id);
            Ok((client.cgroup_id, client.replies[0].clone()))
        })
        .collect()
}

fn events(setup: &Setup) -> Result<Value> {
    Ok(setup.status()?["events"].clone())
}

fn count(value: &Value, key: &str) -> Result<u64> {
    value[key].as_u64().with_context(|| format!("{key} in {value}"))
}

#[test]
fn weights_one_to_three_give_the_heavier_backend_three_quarters() -> Result<()> {
    let mut setup = Setup::new("weights")?;
    serve(&mut setup, 1..=2)?;
    commit_and_apply(&setup, &web(&[(1, "weight: 1"), (2, "weight: 3")], ""), "1:3")?;
    let result = setup.sandbox.probe_tcp(VIP, 4000)?;
    assert!(result.errors.is_empty(), "{result:?}");
    let share = *result.replies.get("b2").context("b2 got nothing")? as f64 / 4000.0;
    assert!((0.72..=0.78).contains(&share), "weight 3 of 4 got {share} of the connects");
    Ok(())
}

#[test]
fn session_affinity_keeps_each_client_on_one_backend() -> Result<()> {
    let mut setup = Setup::new("affinity")?;
    serve(&mut setup, 1..=4)?;
    let backends = [(1, ""), (2, ""), (3, ""), (4, "")];
    commit_and_apply(&setup, &web(&backends, "  sessionAffinity: {timeoutSeconds: 2}\n"), "web")?;
    let clients = setup.sandbox.client_cgroups(40)?;
    let seen = setup.sandbox.connect_from_cgroups(VIP, 8, &clients)?;
    let chosen = one_backend_each(&seen)?;
    // Without affinity, 8 random connects over 4 backends almost never stay on one; with it,
    // clients still spread: each first connect chose at random.
    let used: BTreeSet<&String> = chosen.values().collect();
    assert!(used.len() >= 3, "40 clients used only {used:?}");
    let events = events(&setup)?;
    assert_eq!(count(&events, "affinity_misses")?, 40, "{events}");
    assert_eq!(count(&events, "affinity_hits")?, 40 * 7, "{events}");
    assert_eq!(setup.status()?["affinity_entries"]["web/http"], 40);

    // client: netns: every cgroup of the sandbox's namespace is one client.
    let spec = "  sessionAffinity: {timeoutSeconds: 2, client: netns}\n";
    let plan = commit_and_apply(&setup, &web(&backends, spec), "netns affinity")?;
    assert!(plan.contains("timeoutSeconds=2 client=netns"), "{plan}");
    let seen = setup.sandbox.connect_from_cgroups(VIP, 2, &clients)?;
    let all: BTreeSet<&String> = seen.iter().flat_map(|c| &c.replies).collect();
    assert_eq!(all.len(), 1, "one network namespace reached {all:?}");
    Ok(())
}

#[test]
fn draining_keeps_its_clients_and_maintenance_or_removal_drops_them() -> Result<()> {
    let mut setup = Setup::new("affinity-states")?;
    serve(&mut setup, 1..=3)?;
    let affinity = "  sessionAffinity: {timeoutSeconds: 300}\n";
    commit_and_apply(&setup, &web(&[(1, ""), (2, ""), (3, "")], affinity), "web")?;
    let first = setup.sandbox.client_cgroups(30)?;
    let chosen = one_backend_each(&setup.sandbox.connect_from_cgroups(VIP, 1, &first)?)?;
    let on_b1: Vec<u64> = chosen.iter().filter(|(_, b)| *b == "b1").map(|(c, _)| *c).collect();
    ensure!(!on_b1.is_empty(), "no client of 30 chose b1: {chosen:?}");

    // Draining: b1's clients stay, new clients go elsewhere; the plan shows an update.
    let draining = web(&[(1, "state: draining"), (2, ""), (3, "")], affinity);
    setup.repo.write("services/web.yaml", &draining);
    setup.repo.commit("b1 drains");
    let plan = setup.expect(2, "plan", &["--detailed-exitcode"])?;
    assert!(plan.contains("service \"web\" will be updated in place"), "{plan}");
    assert!(plan.contains("127.0.0.11:8080 draining"), "{plan}");
    setup.expect(0, "apply", &[])?;
    let again = one_backend_each(&setup.sandbox.connect_from_cgroups(VIP, 3, &first)?)?;
    assert_eq!(again, chosen, "draining moved clients");
    let newcomers = setup.sandbox.client_cgroups(30)?;
    let later = one_backend_each(&setup.sandbox.connect_from_cgroups(VIP, 1, &newcomers)?)?;
    assert!(later.values().all(|b| b != "b1"), "a new client went to draining b1: {later:?}");

    // Maintenance: b1's clients lose it, and their entries are dropped (counted).
    let dropped_before = count(&events(&setup)?, "affinity_dropped")?;
    let maintenance = web(&[(1, "state: maintenance"), (2, ""), (3, "")], affinity);
    commit_and_apply(&setup, &maintenance, "b1 in maintenance")?;
    let after = one_backend_each(&setup.sandbox.connect_from_cgroups(VIP, 3, &first)?)?;
    assert!(after.values().all(|b| b != "b1"), "a client kept b1 in maintenance: {after:?}");
    for (client, backend) in &chosen {
        if backend != "b1" {
            assert_eq!(&after[client], backend, "a client of {backend} moved");
        }
    }
    let dropped = count(&events(&setup)?, "affinity_dropped")? - dropped_before;
    assert_eq!(dropped, on_b1.len() as u64, "dropped entries");

    // Removed from git: the same for b2's clients, whose entries are dropped (counted).
    let on_b2 = after.values().filter(|b| *b == "b2").count() as u64;
    let dropped_before = count(&events(&setup)?, "affinity_dropped")?;
    commit_and_apply(&setup, &web(&[(1, "state: maintenance"), (3, "")], affinity), "b2 goes")?;
    let last = one_backend_each(&setup.sandbox.connect_from_cgroups(VIP, 1, &first)?)?;
    assert!(last.values().all(|b| b == "b3"), "{last:?}");
    let dropped = count(&events(&setup)?, "affinity_dropped")? - dropped_before;
    assert_eq!(dropped, on_b2, "dropped entries of b2's clients");
    Ok(())
}

/// An affinity entry holds only for the backend it was made for: b1 removed, then b3 added
/// with b1's freed ID, b1's idle clients are not taken to b3 by their entries (dropped,
/// counted), and b2's keep b2.
#[test]
fn affinity_never_follows_a_reused_backend_id() -> Result<()> {
    let mut setup = Setup::new("affinity-reuse")?;
    serve(&mut setup, 1..=3)?;
    let affinity = "  sessionAffinity: {timeoutSeconds: 300}\n";
    commit_and_apply(&setup, &web(&[(1, ""), (2, "")], affinity), "web")?;
    let clients = setup.sandbox.client_cgroups(30)?;
    let chosen = one_backend_each(&setup.sandbox.connect_from_cgroups(VIP, 1, &clients)?)?;
    let on_b1 = chosen.values().filter(|b| *b == "b1").count() as u64;
    ensure!(on_b1 > 0 && on_b1 < 30, "30 clients over two backends: {chosen:?}");
    commit_and_apply(&setup, &web(&[(2, "")], affinity), "b1 goes")?;
    commit_and_apply(&setup, &web(&[(2, ""), (3, "")], affinity), "b3 comes")?;
    let before = events(&setup)?;
    let after = one_backend_each(&setup.sandbox.connect_from_cgroups(VIP, 1, &clients)?)?;
    let events = events(&setup)?;
    let delta = |key: &str| -> Result<u64> { Ok(count(&events, key)? - count(&before, key)?) };
    assert_eq!(delta("affinity_dropped")?, on_b1, "{events}");
    assert_eq!(delta("affinity_hits")?, 30 - on_b1, "{events}");
    for (client, backend) in &chosen {
        if backend == "b2" {
            assert_eq!(&after[client], "b2", "a client of b2 moved");
        }
    }
    Ok(())
}

#[test]
fn affinity_lapses_after_the_timeout_without_a_connect() -> Result<()> {
    let mut setup = Setup::new("affinity-timeout")?;
    serve(&mut setup, 1..=2)?;
    commit_and_apply(
        &setup,
        &web(&[(1, ""), (2, "")], "  sessionAffinity: {timeoutSeconds: 1}\n"),
        "web",
    )?;
    let clients = setup.sandbox.client_cgroups(10)?;
    setup.sandbox.connect_from_cgroups(VIP, 1, &clients)?;
    assert_eq!(setup.status()?["affinity_entries"]["web/http"], 10);
    // Entries older than the timeout no longer count (status reads the same clock the
    // programs write, CLOCK_MONOTONIC).
    wait_for("the entries to lapse", Duration::from_secs(10), || {
        let status = setup.status().ok()?;
        (status["affinity_entries"]["web/http"] == 0).then_some(())
    })?;
    let before = events(&setup)?;
    setup.sandbox.connect_from_cgroups(VIP, 1, &clients)?;
    let after = events(&setup)?;
    assert_eq!(count(&after, "affinity_misses")? - count(&before, "affinity_misses")?, 10);
    assert_eq!(count(&after, "affinity_hits")?, count(&before, "affinity_hits")?);
    Ok(())
}

/// The backend the Maglev table in the live maps gives a client (cgroup ID `client`), by
/// the documented formula, as a listener name.
fn maglev_prediction(setup: &Setup, clients: &[u64]) -> Result<BTreeMap<u64, String>> {
    let live = Dataplane::open(setup.sandbox.pin_path())?.read_live()?.state;
    let service = live.services.values().next().context("no service")?;
    let names: BTreeMap<SocketAddr, String> = (1..=20)
        .map(|i| Ok((format!("{}:8080", address(i)).parse()?, format!("b{i}"))))
        .collect::<Result<_>>()?;
    clients
        .iter()
        .map(|&client| {
            let slot = maglev::client_slot(client, service.slot_count);
            let backend = live.slots[&(service.id, slot)];
            Ok((client, names[&live.backends[&backend].addr].clone()))
        })
        .collect()
}

#[test]
fn maglev_picks_what_the_table_says_and_moves_only_the_clients_of_a_changed_backend() -> Result<()>
{
    let mut setup = Setup::new("maglev")?;
    serve(&mut setup, 1..=11)?;
    // The largest table: Maglev moves a few of the other backends' clients when one goes
    // (2-4% at 100 slots a backend, 0.3% at 6 552), and 200 clients must see ≤ 3% move.
    let spec = "  loadBalancing: {algorithm: maglev, tableSize: 65521}\n";
    let ten: Vec<(usize, &str)> = (1..=10).map(|i| (i, "")).collect();
    commit_and_apply(&setup, &web(&ten, spec), "ten backends")?;
    let clients: Vec<PathBuf> = setup.sandbox.client_cgroups(200)?;
    let seen = setup.sandbox.connect_from_cgroups(VIP, 2, &clients)?;
    let before = one_backend_each(&seen)?;
    let ids: Vec<u64> = before.keys().copied().collect();
    assert_eq!(before, maglev_prediction(&setup, &ids)?, "the kernel and the formula disagree");
    let used: BTreeSet<&String> = before.values().collect();
    assert_eq!(used.len(), 10, "200 clients over 10 backends used {used:?}");

    // A map reset (uninstall, install) gives every client the same backend: no state.
    setup.expect(0, "uninstall", &[])?;
    setup.expect(0, "apply", &[])?;
    let reset = one_backend_each(&setup.sandbox.connect_from_cgroups(VIP, 1, &clients)?)?;
    assert_eq!(reset, before, "clients moved over a map reset");

    // Remove b4: only its clients move, and the apply rewrites about M/N slots.
    let nine: Vec<(usize, &str)> = ten.iter().copied().filter(|(i, _)| *i != 4).collect();
    let output = commit_and_apply(&setup, &web(&nine, spec), "b4 goes")?;
    let writes = reconciler_tests::gitops::map_writes(&output)?;
    let changed_entries = (writes - 3) / 2;
    assert!(
        (6552..=6552 * 105 / 100).contains(&changed_entries),
        "{changed_entries} entries changed for one backend of 10 in 65521 slots\n{output}"
    );
    let after = one_backend_each(&setup.sandbox.connect_from_cgroups(VIP, 1, &clients)?)?;
    assert_eq!(after, maglev_prediction(&setup, &ids)?);
    let others: Vec<u64> = ids.iter().copied().filter(|c| before[c] != "b4").collect();
    let moved = others.iter().filter(|c| after[c] != before[c]).count();
    assert!(moved * 100 <= others.len() * 3, "{moved} of {} other clients moved", others.len());
    assert!(after.values().all(|b| b != "b4"));

    // Add b11: about 1/11 of the clients move to it, at most 2% between old backends.
    let mut eleven = ten.clone();
    eleven.push((11, ""));
    commit_and_apply(&setup, &web(&eleven, spec), "b11 comes")?;
    let grown = one_backend_each(&setup.sandbox.connect_from_cgroups(VIP, 1, &clients)?)?;
    assert_eq!(grown, maglev_prediction(&setup, &ids)?);
    // The table gives b11 its share; the clients that landed on it are a sample of that.
    let live = Dataplane::open(setup.sandbox.pin_path())?.read_live()?.state;
    let b11 = live.backends.iter().find(|(_, b)| b.addr.ip().to_string() == address(11));
    let b11 = *b11.context("no b11 in the live maps")?.0;
    let share = live.slots.values().filter(|&&b| b == b11).count() as f64 / 65521.0;
    assert!((share - 1.0 / 11.0).abs() <= 0.01, "b11 owns {share} of the table");
    assert!(ids.iter().any(|c| grown[c] == "b11"), "no client of 200 moved to b11");
    let between = ids.iter().filter(|c| grown[c] != "b11" && grown[c] != before[c]).count();
    assert!(between * 100 <= ids.len() * 2, "{between} of 200 moved between old backends");
    Ok(())
}

#[test]
fn draining_backends_take_new_clients_only_when_none_is_active_and_maintenance_never() -> Result<()>
{
    let mut setup = Setup::new("states")?;
    serve(&mut setup, 1..=3)?;
    let reached = |setup: &Setup| -> Result<BTreeSet<String>> {
        let result = setup.sandbox.probe_tcp(VIP, 200)?;
        ensure!(result.errors.is_empty(), "{result:?}");
        Ok(result.replies.into_keys().collect())
    };
    let states = |b1: &str, b2: &str, b3: &str| web(&[(1, b1), (2, b2), (3, b3)], "");
    commit_and_apply(&setup, &states("", "state: draining", "state: maintenance"), "one active")?;
    assert_eq!(reached(&setup)?, BTreeSet::from(["b1".to_owned()]));
    // No active backend: the draining ones take new clients, so the service never empties.
    let output = commit_and_apply(
        &setup,
        &states("state: draining", "state: draining", "state: maintenance"),
        "all draining",
    )?;
    assert!(output.contains("1 changed"), "{output}");
    assert_eq!(reached(&setup)?, BTreeSet::from(["b1".to_owned(), "b2".to_owned()]));
    // Nothing usable: refused at once, counted.
    commit_and_apply(
        &setup,
        &states("state: maintenance", "state: maintenance", "state: maintenance"),
        "all in maintenance",
    )?;
    let result = setup.sandbox.probe_tcp(VIP, 10)?;
    assert_eq!(result.errors.get("ECONNREFUSED"), Some(&10), "{result:?}");
    assert_eq!(count(&events(&setup)?, "no_backend")?, 10);
    Ok(())
}

#[test]
fn putting_a_backend_in_maintenance_ends_its_connected_udp_sockets() -> Result<()> {
    let mut setup = Setup::new("maintenance-udp")?;
    setup.sandbox.serve_udp("127.0.0.11:5300", "b11")?;
    setup.sandbox.serve_udp("127.0.0.12:5300", "b12")?;
    let dns = |state: &str| {
        format!(
            "apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {{name: dns}}\n\
             spec:\n  vip: 10.96.0.53\n  ports: [{{port: 53, protocol: UDP, targetPort: 5300}}]\n\
             \x20 backends:\n    - {{address: 127.0.0.11, state: {state}}}\n\
             \x20   - {{address: 127.0.0.12, state: maintenance}}\n"
        )
    };
    setup.repo.write("services/dns.yaml", dns("active"));
    setup.repo.commit("dns on b11");
    setup.expect(0, "apply", &[])?;
    let mut client = setup.sandbox.connected_udp_client("10.96.0.53:53")?;
    assert_eq!(client.line()?, "b11");
    // Draining keeps the socket; maintenance ends it.
    setup.repo.write("services/dns.yaml", dns("draining"));
    setup.repo.commit("b11 drains");
    let output = setup.expect(0, "apply", &["--output", "json"])?;
    let report: Value = serde_json::from_str(&output)?;
    assert_eq!(report["result"]["sockets_destroyed"], 0, "{report}");
    setup.repo.write("services/dns.yaml", dns("maintenance"));
    setup.repo.commit("b11 in maintenance");
    let output = setup.expect(0, "apply", &["--output", "json"])?;
    let report: Value = serde_json::from_str(&output)?;
    assert_eq!(report["result"]["sockets_destroyed"], 1, "{report}");
    assert_eq!(client.finish()?, ["ECONNABORTED"]);
    Ok(())
}
