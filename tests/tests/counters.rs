//! The programs' counters in the real kernel, as `reconciler status --counters` reads them:
//! exact (N connects, N counted), by name, and reset when an ID gets a new owner.
use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use reconciler::dataplane::Dataplane;
use reconciler_tests::gitops::Setup;
use serde_json::Value;

/// `web` (TCP, `backends` on port 8080) and `dns` (UDP, 127.0.0.21:5300) as one file.
fn definitions(backends: &[&str], dns_state: &str) -> String {
    let mut text = String::from(
        "apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\nspec:\n  \
         vip: 10.96.0.10\n  ports: [{name: http, port: 80, targetPort: 8080}]\n  backends:\n",
    );
    for backend in backends {
        text.push_str(&format!("    - {{address: {backend}}}\n"));
    }
    text.push_str(&format!(
        "---\napiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {{name: dns}}\n\
         spec:\n  vip: 10.96.0.53\n  ports: [{{name: dns, port: 53, protocol: UDP, targetPort: 5300}}]\n\
         \x20 backends: [{{address: 127.0.0.21, state: {dns_state}}}]\n"
    ));
    text
}

/// Per backend (`addr:port`): (connections, reverse translations).
type BackendCounts = BTreeMap<String, (u64, u64)>;
/// Per service (`name/port`): its refusals, as `status` shows them.
type ServiceCounts = BTreeMap<String, Value>;

fn counters(setup: &Setup) -> Result<(BackendCounts, ServiceCounts)> {
    let text = setup.expect(0, "status", &["--counters", "--output", "json"])?;
    let status: Value = serde_json::from_str(&text)?;
    let counters = &status["counters"];
    let backends = counters["backends"]
        .as_array()
        .context("backends")?
        .iter()
        .map(|b| {
            let count = |key: &str| b[key].as_u64().with_context(|| format!("{key} in {b}"));
            let name = b["backend"].as_str().context("backend")?.to_owned();
            Ok((name, (count("connections")?, count("reverse_translations")?)))
        })
        .collect::<Result<_>>()?;
    let services = counters["services"]
        .as_array()
        .context("services")?
        .iter()
        .map(|s| Ok((s["service"].as_str().context("service")?.to_owned(), s.clone())))
        .collect::<Result<_>>()?;
    Ok((backends, services))
}

#[test]
fn counters_are_exact_by_name_and_start_from_zero_for_a_new_owner() -> Result<()> {
    let mut setup = Setup::new("counters")?;
    setup.sandbox.serve_tcp("127.0.0.11:8080", "b11")?;
    setup.sandbox.serve_tcp("127.0.0.12:8080", "b12")?;
    setup.sandbox.serve_tcp("127.0.0.13:8080", "b13")?;
    setup.sandbox.serve_udp("127.0.0.21:5300", "d21")?;
    setup.repo.write("services/all.yaml", definitions(&["127.0.0.11", "127.0.0.12"], "active"));
    setup.repo.commit("web and dns");
    setup.expect(0, "apply", &[])?;

    // 37 connects: counted exactly, per backend as the clients saw them.
    let result = setup.sandbox.probe_tcp("10.96.0.10:80", 37)?;
    let (backends, _) = counters(&setup)?;
    for (name, addr) in [("b11", "127.0.0.11:8080"), ("b12", "127.0.0.12:8080")] {
        let seen = result.replies.get(name).copied().unwrap_or(0);
        assert_eq!(backends[addr].0, seen, "{addr}: {backends:?} against {result:?}");
    }
    assert_eq!(backends["127.0.0.11:8080"].0 + backends["127.0.0.12:8080"].0, 37);

    // 5 datagrams on an unconnected socket and their replies: 5 translations each way.
    let mut client = setup.sandbox.python_session(
        "
import socket
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(5)
for _ in range(5):
    u.sendto(b'q', ('10.96.0.53', 53))
    data, peer = u.recvfrom(512)
print(peer[0], flush=True)
",
        &[],
    )?;
    assert_eq!(client.line()?, "10.96.0.53");
    client.finish()?;
    let (backends, services) = counters(&setup)?;
    assert_eq!(backends["127.0.0.21:5300"], (5, 5), "{backends:?}");
    assert_eq!(services["dns/dns"]["no_backend"], 0);

    // A service with nothing usable: each refusal counted for it.
    setup
        .repo
        .write("services/all.yaml", definitions(&["127.0.0.11", "127.0.0.12"], "maintenance"));
    setup.repo.commit("dns in maintenance");
    setup.expect(0, "apply", &[])?;
    let client = setup.sandbox.python_session(
        "
import socket, errno
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(4):
    try:
        u.sendto(b'q', ('10.96.0.53', 53))
    except OSError as e:
        print(errno.errorcode[e.errno], flush=True)
",
        &[],
    )?;
    assert_eq!(client.finish()?, ["ECONNREFUSED"; 4]);
    let (_, services) = counters(&setup)?;
    assert_eq!(services["dns/dns"]["no_backend"], 4, "{services:?}");

    // b12 goes; b13 comes and takes b12's freed ID: it starts from zero.
    let id_of = |addr: &str| -> Result<u32> {
        let live = Dataplane::open(setup.sandbox.pin_path())?.read_live()?.state;
        let addr: std::net::SocketAddr = addr.parse()?;
        let found = live.backends.iter().find(|(_, b)| b.addr == addr);
        Ok(*found.with_context(|| format!("no backend {addr}"))?.0)
    };
    let b12_id = id_of("127.0.0.12:8080")?;
    setup.repo.write("services/all.yaml", definitions(&["127.0.0.11"], "maintenance"));
    setup.repo.commit("b12 goes");
    setup.expect(0, "apply", &[])?;
    setup
        .repo
        .write("services/all.yaml", definitions(&["127.0.0.11", "127.0.0.13"], "maintenance"));
    setup.repo.commit("b13 comes");
    setup.expect(0, "apply", &[])?;
    assert_eq!(id_of("127.0.0.13:8080")?, b12_id, "b13 did not take b12's freed ID");
    let (backends, _) = counters(&setup)?;
    assert_eq!(backends["127.0.0.13:8080"], (0, 0), "{backends:?}");
    let b11_before = backends["127.0.0.11:8080"].0;
    let result = setup.sandbox.probe_tcp("10.96.0.10:80", 20)?;
    let (backends, _) = counters(&setup)?;
    assert_eq!(backends["127.0.0.13:8080"].0, result.replies.get("b13").copied().unwrap_or(0));
    assert_eq!(backends["127.0.0.11:8080"].0 - b11_before, result.replies["b11"]);
    Ok(())
}

/// What `bpftool -j map show pinned PATH` says of a map: (type, max_entries, bytes_memlock).
fn bpftool_map(path: &std::path::Path) -> Result<(String, u64, u64)> {
    let output = std::process::Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(path)
        .output()
        .context("running bpftool (make setup installs it)")?;
    anyhow::ensure!(
        output.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let map: Value = serde_json::from_slice(&output.stdout)?;
    let number = |key: &str| map[key].as_u64().with_context(|| format!("{key} in {map}"));
    Ok((
        map["type"].as_str().context("type")?.to_owned(),
        number("max_entries")?,
        number("bytes_memlock")?,
    ))
}

#[test]
fn status_shows_each_maps_capacity_fill_and_memory_as_bpftool_does() -> Result<()> {
    let mut setup = Setup::new("footprint")?;
    setup.sandbox.serve_tcp("127.0.0.11:8080", "b11")?;
    setup.repo.write("services/all.yaml", definitions(&["127.0.0.11", "127.0.0.12"], "active"));
    setup.repo.commit("web and dns");
    setup.expect(0, "apply", &[])?;
    let connected = setup.sandbox.probe_tcp("10.96.0.10:80", 10)?;
    let status = setup.status()?;
    // This kernel destroys sockets on request (CONFIG_INET_DIAG_DESTROY).
    assert_eq!(status["socket_destroy_supported"], true);
    let memory = status["memory"].clone();
    let possible = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let (first, last) = possible.trim().split_once('-').unwrap_or(("0", possible.trim()));
    let possible_cpus = last.parse::<u64>()? - first.parse::<u64>()? + 1;
    assert_eq!(memory["possible_cpus"], possible_cpus);
    let maps = memory["maps"].as_array().context("maps")?;
    assert_eq!(maps.len(), 21, "{memory}");
    let (mut here, mut large) = (0, 0);
    for map in maps {
        let name = map["name"].as_str().context("name")?;
        let (kind, capacity, memlock) = bpftool_map(&setup.sandbox.pin_path().join(name))?;
        assert_eq!(
            (map["kind"].as_str(), map["capacity"].as_u64()),
            (Some(kind.as_str()), Some(capacity)),
            "{name}"
        );
        assert_eq!(map["memory_bytes"], memlock, "{name}: bpftool says {memlock} bytes");
        let per_cpu = kind.starts_with("percpu");
        assert_eq!(map["per_cpu"], per_cpu, "{name}");
        let at_large = if per_cpu { memlock * 256 / possible_cpus } else { memlock };
        assert_eq!(map["memory_bytes_at_large_host"], at_large, "{name}");
        (here, large) = (here + memlock, large + at_large);
    }
    assert_eq!(
        (memory["bytes"].as_u64(), memory["bytes_at_large_host"].as_u64()),
        (Some(here), Some(large))
    );
    // At the default capacity the maps lock at most 64 MiB on a host of 256 CPUs.
    assert!(large <= 64 << 20, "{large} bytes at 256 CPUs: {memory}");
    // Fill: both sets of web's and dns's frontends, VIPs and three backends, two names; no
    // reverse entry for the connects, whose records live with their sockets.
    let entries =
        |name: &str| maps.iter().find(|m| m["name"] == name).and_then(|m| m["entries"].as_u64());
    assert_eq!(
        [entries("SERVICES"), entries("VIPS"), entries("BACKENDS"), entries("SERVICE_NAMES")],
        [Some(4), Some(4), Some(6), Some(2)]
    );
    assert!(connected.total() > 0, "{connected:?}");
    assert_eq!(entries("REVERSE"), Some(0), "{connected:?}");
    assert_eq!(entries("SOCKETS"), None, "socket storage lives with the sockets");
    assert_eq!(entries("ACTIVE_SET"), None, "an array has no fill of its own");
    // The text says so too, rather than a capacity socket storage does not have.
    let text = setup.expect(0, "status", &[])?;
    let sockets =
        text.lines().find(|l| l.trim_start().starts_with("SOCKETS")).context("SOCKETS")?;
    assert!(sockets.contains("one per socket"), "{text}");
    Ok(())
}

#[test]
fn the_capacity_is_set_at_install_kept_and_never_changed_silently() -> Result<()> {
    let mut setup = Setup::new("capacity")?;
    setup.sandbox.serve_tcp("127.0.0.11:8080", "b11")?;
    setup.repo.write("services/all.yaml", definitions(&["127.0.0.11", "127.0.0.12"], "active"));
    setup.repo.commit("web and dns");
    // Three slots (web's two, dns's one) do not fit two: refused at validation, naming the
    // file and line, before anything is made.
    let output = setup.run("apply", &["--capacity", "slots=2"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(output.status.code() == Some(1), "{stderr}");
    anyhow::ensure!(
        stderr.contains("services/all.yaml:")
            && stderr
                .contains("defines 3 selection slots (weights, per port); the data plane holds 2"),
        "{stderr}"
    );
    anyhow::ensure!(!setup.sandbox.pin_path().exists(), "a refused apply installed");

    let capacity = "services=8,backends=16,slots=64";
    setup.expect(0, "apply", &["--capacity", capacity])?;
    let status = setup.status()?;
    let maps = status["memory"]["maps"].as_array().context("maps")?;
    let size = |name: &str| maps.iter().find(|m| m["name"] == name).map(|m| m["capacity"].clone());
    for (name, entries) in [
        ("SERVICES", 16),
        ("VIPS", 16),
        ("SERVICE_TOTALS", 8),
        ("BACKENDS", 32),
        ("BACKEND_TOTALS", 16),
        ("SLOTS", 128),
        ("REVERSE", 65_536),
    ] {
        assert_eq!(size(name), Some(Value::from(entries)), "{name}");
    }
    // Translated: to b11, or refused by the other backend, which does not listen.
    let result = setup.sandbox.probe_tcp("10.96.0.10:80", 4)?;
    let translated = result.total() == 4 && result.errors.keys().all(|e| e == "ECONNREFUSED");
    anyhow::ensure!(translated && result.replies.len() <= 1, "{result:?}");

    // The same capacity, or none (the installed one is kept), applies; another is refused,
    // naming what to run, and changes nothing.
    setup.expect(0, "apply", &["--capacity", capacity])?;
    setup.expect(0, "plan", &[])?;
    let output = setup.run("apply", &["--capacity", "services=9"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(output.status.code() == Some(1), "{stderr}");
    anyhow::ensure!(
        stderr.contains(
            "was installed with capacity services=8,backends=16,slots=64,connections=65536,\
             affinity=65536, and services=9,backends=32768,slots=131072,connections=65536,\
             affinity=65536 is asked for"
        ) && stderr.contains("reconciler uninstall --pin-path"),
        "{stderr}"
    );
    assert_eq!(setup.status()?, status, "a refused apply changed the maps");

    // A repository over the installed capacity: 15 backends for web and dns's one are more
    // than 16 - 1.
    let many: Vec<String> = (11..26).map(|i| format!("127.0.0.{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    setup.repo.write("services/all.yaml", definitions(&many, "active"));
    setup.repo.commit("web: fifteen backends");
    let output = setup.run("apply", &[])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(output.status.code() == Some(1), "{stderr}");
    anyhow::ensure!(
        stderr.contains("backends: 16 is more than the data plane holds (15)"),
        "{stderr}"
    );
    Ok(())
}

/// `web` at `vip`, port 80, with `backends` on port 8080.
fn web_at(vip: &str, backends: &[&str]) -> String {
    let backends: Vec<String> = backends.iter().map(|b| format!("{{address: {b}}}")).collect();
    format!(
        "apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  \
         vip: {vip}\n  ports: [{{port: 80, targetPort: 8080}}]\n  backends: [{}]\n",
        backends.join(", ")
    )
}

#[test]
fn a_full_data_plane_applies_a_replaced_backend_and_a_moved_service() -> Result<()> {
    let mut setup = Setup::new("fullcap")?;
    for (addr, name) in [("127.0.0.11:8080", "b11"), ("127.0.0.12:8080", "b12")] {
        setup.sandbox.serve_tcp(addr, name)?;
    }
    setup.sandbox.serve_tcp("127.0.0.13:8080", "b13")?;
    // One service and two backends fill services=2, backends=3 (IDs from 1).
    setup.repo.write("services/web.yaml", web_at("10.96.0.10", &["127.0.0.11", "127.0.0.12"]));
    setup.repo.commit("web");
    setup.expect(0, "apply", &["--capacity", "services=2,backends=3,slots=64"])?;
    let before = setup.sandbox.probe_tcp("10.96.0.10:80", 8)?;
    anyhow::ensure!(before.replies.values().sum::<u64>() == 8, "{before:?}");

    // b12 replaced by b13: its ID is the one free, so it starts from b12's counts, zeroed.
    setup.repo.write("services/web.yaml", web_at("10.96.0.10", &["127.0.0.11", "127.0.0.13"]));
    setup.repo.commit("web: b13 for b12");
    setup.expect(0, "apply", &[])?;
    let after = setup.sandbox.probe_tcp("10.96.0.10:80", 12)?;
    anyhow::ensure!(after.replies.values().sum::<u64>() == 12, "{after:?}");
    anyhow::ensure!(!after.replies.contains_key("b12"), "{after:?}");
    let (backends, _) = counters(&setup)?;
    let b13 = after.replies.get("b13").copied().unwrap_or(0);
    assert_eq!(backends.get("127.0.0.13:8080").map(|c| c.0), Some(b13), "{backends:?}");

    // web moved to another VIP: a new service, with the IDs the old one frees.
    setup.repo.write("services/web.yaml", web_at("10.96.0.11", &["127.0.0.11", "127.0.0.13"]));
    setup.repo.commit("web: moved");
    setup.expect(0, "apply", &[])?;
    let moved = setup.sandbox.probe_tcp("10.96.0.11:80", 8)?;
    anyhow::ensure!(moved.replies.values().sum::<u64>() == 8, "{moved:?}");
    let (backends, _) = counters(&setup)?;
    let total: u64 = backends.values().map(|c| c.0).sum();
    assert_eq!(total, 8, "the moved service's counters start from zero: {backends:?}");
    setup.expect(0, "plan", &["--detailed-exitcode"])?;
    Ok(())
}
