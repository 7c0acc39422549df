//! GitOps end to end in the real kernel: the real `reconciler` binary applies commits of a
//! real repository to a data plane attached to a sandbox cgroup, and clients in that cgroup
//! connect to real listeners through the VIPs.
use std::{collections::BTreeSet, process::Command};

use anyhow::{ensure, Context as _, Result};
use reconciler_tests::{
    add_service_by_hand,
    gitops::{map_writes, service, Setup},
    reconciler_path, DATA_PLANE_PROGRAMS,
};

fn names(set: &[&str]) -> BTreeSet<String> {
    set.iter().map(|s| s.to_string()).collect()
}

#[test]
fn apply_from_git_serves_the_vip_and_a_second_plan_shows_no_changes() -> Result<()> {
    let mut setup = Setup::new("gitops")?;
    for (ip, name) in [("127.0.0.11", "b11"), ("127.0.0.12", "b12")] {
        setup.sandbox.serve_tcp(&format!("{ip}:8080"), name)?;
    }
    setup.repo.write(
        "services/web.yaml",
        service("web", "10.96.0.10", &[("127.0.0.11", 1), ("127.0.0.12", 1)]),
    );
    let head = setup.repo.commit("web");

    let output = setup.expect(0, "apply", &[])?;
    assert!(
        output.contains("Apply complete! Services: 1 added, 0 changed, 0 destroyed."),
        "{output}"
    );
    let result = setup.sandbox.probe_tcp("10.96.0.10:80", 100)?;
    assert!(result.errors.is_empty(), "{result:?}");
    assert_eq!(result.replies.keys().cloned().collect::<BTreeSet<_>>(), names(&["b11", "b12"]));

    let plan = setup.expect(0, "plan", &["--detailed-exitcode"])?;
    assert!(plan.contains("No changes."), "{plan}");
    let status = setup.status()?;
    assert_eq!(status["revision"], head.as_str());
    assert_eq!(status["generation"], 1);
    assert_eq!(status["services"], 1);

    // Applying the same commit again writes nothing.
    let again = setup.expect(0, "apply", &[])?;
    assert_eq!(map_writes(&again)?, 0, "{again}");
    Ok(())
}

#[test]
fn one_weight_change_among_1000_services_writes_a_handful_of_entries() -> Result<()> {
    let setup = Setup::new("thousand")?;
    let write_all = |changed_weight: u32| {
        let mut text = String::new();
        for i in 0..1000u32 {
            let vip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
            let base = format!("127.1.{}.{}", i / 250, i % 250 + 1);
            let weight = if i == 500 { changed_weight } else { 1 };
            let second = format!("127.2.{}.{}", i / 250, i % 250 + 1);
            text.push_str(&service(&format!("svc-{i}"), &vip, &[(&base, weight), (&second, 1)]));
        }
        setup.repo.write("services/all.yaml", text);
    };
    write_all(1);
    setup.repo.commit("1000 services");
    let cold = setup.expect(0, "apply", &[])?;
    assert!(cold.contains("1000 added"), "{cold}");

    write_all(3);
    setup.repo.commit("svc-500: weight 3");
    let plan = setup.expect(2, "plan", &["--detailed-exitcode"])?;
    assert!(plan.contains("Plan: 0 to add, 1 to change, 0 to destroy."), "{plan}");
    // Two new slots and the service's slot count: 3 entries, each written into both sets,
    // plus the dirty mark, the flip and the final metadata.
    assert!(plan.contains("Apply will change 3 map entries in 9 map writes."), "{plan}");
    let applied = setup.expect(0, "apply", &[])?;
    assert_eq!(map_writes(&applied)?, 9, "{applied}");
    Ok(())
}

#[test]
fn a_saved_plan_applies_exactly_and_is_refused_once_stale() -> Result<()> {
    let setup = Setup::new("saved")?;
    setup.repo.write("services/web.yaml", service("web", "10.96.0.10", &[("127.0.0.11", 1)]));
    setup.repo.commit("web");
    let plan_file = setup.cache.path().join("plan.json");
    let plan_path = plan_file.display().to_string();
    setup.expect(0, "plan", &["--out", &plan_path])?;
    // A commit after the plan was made is not what the saved plan applies.
    setup.repo.write("services/api.yaml", service("api", "10.96.0.20", &[("127.0.0.21", 1)]));
    setup.repo.commit("api");

    let output = setup.expect(0, "apply", &[&plan_path])?;
    assert!(output.contains("1 added"), "{output}");
    assert_eq!(setup.status()?["services"], 1);

    setup.expect(0, "apply", &[])?;
    assert_eq!(setup.status()?["services"], 2);
    let output = setup.run("apply", &[&plan_path])?;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("the saved plan is stale"), "{stderr}");
    assert_eq!(setup.status()?["services"], 2, "a stale plan changed the maps");
    Ok(())
}

#[test]
fn an_entry_written_by_hand_is_drift_and_apply_removes_it() -> Result<()> {
    let setup = Setup::new("drift")?;
    setup.repo.write("services/web.yaml", service("web", "10.96.0.10", &[("127.0.0.11", 1)]));
    setup.repo.commit("web");
    setup.expect(0, "apply", &[])?;
    let active = setup.status()?["active_set"].as_u64().context("active_set")? as u8;
    add_service_by_hand(setup.sandbox.pin_path(), active)?;

    // A default plan reads only what changed since the recorded apply (nothing): the README
    // says so. --refresh reads every entry.
    let plan = setup.expect(0, "plan", &["--detailed-exitcode"])?;
    assert!(plan.contains("No changes."), "{plan}");
    let plan = setup.expect(2, "plan", &["--detailed-exitcode", "--refresh"])?;
    assert!(plan.contains("Drift: the live maps differ"), "{plan}");
    assert!(plan.contains("- service \"(unnamed service 999)\""), "{plan}");
    assert!(plan.contains("10.96.9.9"), "{plan}");
    setup.expect(0, "apply", &["--refresh"])?;
    let plan = setup.expect(0, "plan", &["--detailed-exitcode", "--refresh"])?;
    assert!(plan.contains("No changes."), "{plan}");
    Ok(())
}

#[test]
fn connects_during_50_applies_always_reach_a_backend_of_one_set() -> Result<()> {
    let mut setup = Setup::new("atomic")?;
    let set_a = [("127.0.0.11", "a1"), ("127.0.0.12", "a2")];
    let set_b = [("127.0.0.21", "b1"), ("127.0.0.22", "b2"), ("127.0.0.23", "b3")];
    for (ip, name) in set_a.iter().chain(&set_b) {
        setup.sandbox.serve_tcp(&format!("{ip}:8080"), name)?;
    }
    let weights = |set: &[(&'static str, &str)]| -> Vec<(&'static str, u32)> {
        set.iter().map(|(ip, _)| (*ip, 1)).collect()
    };
    setup.repo.write("services/web.yaml", service("web", "10.96.0.10", &weights(&set_a)));
    let commit_a = setup.repo.commit("set a");
    setup.repo.write("services/web.yaml", service("web", "10.96.0.10", &weights(&set_b)));
    let commit_b = setup.repo.commit("set b");
    setup.expect(0, "apply", &["--ref", &commit_a])?;

    let stop = setup.cache.path().join("stop");
    let probes: Vec<_> = (0..3)
        .map(|_| setup.sandbox.spawn_probe_until(&stop, "10.96.0.10:80"))
        .collect::<Result<_>>()?;
    for round in 0..50 {
        let commit = if round % 2 == 0 { &commit_b } else { &commit_a };
        let output = setup.expect(0, "apply", &["--ref", commit])?;
        assert!(map_writes(&output)? > 0, "apply {round} changed nothing:\n{output}");
    }
    std::fs::write(&stop, "")?;

    let allowed = names(&["a1", "a2", "b1", "b2", "b3"]);
    let mut seen = BTreeSet::new();
    for probe in probes {
        let result = probe.wait()?;
        assert!(result.errors.is_empty(), "a connect failed during the applies: {result:?}");
        assert!(result.total() > 0, "a probe made no connects");
        for name in result.replies.keys() {
            assert!(allowed.contains(name), "reached {name}, not a backend of either set");
            seen.insert(name.clone());
        }
    }
    // The applies really switched sets while clients connected.
    assert!(
        seen.iter().any(|n| n.starts_with('a')) && seen.iter().any(|n| n.starts_with('b')),
        "{seen:?}"
    );
    Ok(())
}

#[test]
fn an_invalid_commit_changes_nothing() -> Result<()> {
    let mut setup = Setup::new("invalid")?;
    setup.sandbox.serve_tcp("127.0.0.11:8080", "b11")?;
    setup.repo.write("services/web.yaml", service("web", "10.96.0.10", &[("127.0.0.11", 1)]));
    let good = setup.repo.commit("good");
    setup.expect(0, "apply", &[])?;
    let before = setup.status()?;

    setup.repo.write(
        "services/web.yaml",
        service("web", "10.96.0.10", &[("127.0.0.11", 1)]).replace("port: 80", "port: 0"),
    );
    setup.repo.write("services/api.yaml", service("api", "10.96.0.20", &[("127.0.0.21", 1)]));
    let bad = setup.repo.commit("bad");
    let output = setup.run("apply", &[])?;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("services/web.yaml:7:"), "{stderr}");
    assert!(stderr.contains(&format!("at commit {bad}")), "{stderr}");

    let after = setup.status()?;
    assert_eq!(after, before, "the live maps changed");
    assert_eq!(after["revision"], good.as_str());
    assert_eq!(setup.sandbox.probe_tcp("10.96.0.10:80", 5)?.replies.get("b11"), Some(&5));
    Ok(())
}

#[test]
fn a_vip_that_is_an_address_of_this_node_is_refused_unless_allowed() -> Result<()> {
    let mut setup = Setup::new("local-vip")?;
    setup.sandbox.serve_tcp("127.0.0.11:8080", "b11")?;
    // The sandbox's node has an address that a commit could try to take over.
    setup.sandbox.run(&["ip", "link", "add", "node0", "type", "veth", "peer", "name", "node0p"])?;
    setup.sandbox.run(&["ip", "addr", "add", "10.96.0.50/32", "dev", "node0"])?;
    setup.sandbox.run(&["ip", "link", "set", "node0", "up"])?;
    setup.repo.write("services/web.yaml", service("web", "10.96.0.50", &[("127.0.0.11", 1)]));
    setup.repo.commit("a VIP that is the node's own address");

    for subcommand in ["plan", "apply"] {
        let output = setup.run_in_sandbox(subcommand, &[])?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{subcommand}: {stderr}");
        assert!(
            stderr.contains(
                "services/web.yaml:6:8: spec.vip: service `web`: VIP 10.96.0.50 is an address \
                 of this node (interface node0)"
            ),
            "{subcommand}: {stderr}"
        );
    }
    ensure!(!setup.sandbox.pin_path().exists(), "a refused apply installed the data plane");

    let output = setup.run_in_sandbox("apply", &["--allow-local-vips", "10.96.0.50"])?;
    ensure!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let result = setup.sandbox.probe_tcp("10.96.0.50:80", 5)?;
    assert_eq!(result.replies.get("b11"), Some(&5), "{result:?}");
    Ok(())
}

#[test]
fn destroying_every_service_must_be_asked_for() -> Result<()> {
    let mut setup = Setup::new("destroy-all")?;
    setup.sandbox.serve_tcp("127.0.0.11:8080", "b11")?;
    setup.repo.write("services/web.yaml", service("web", "10.96.0.10", &[("127.0.0.11", 1)]));
    setup.repo.write("services/api.yaml", service("api", "10.96.0.20", &[("127.0.0.11", 1)]));
    setup.repo.commit("two services");
    setup.expect(0, "apply", &[])?;
    let before = setup.status()?;

    // The definitions are gone from the path (moved, or renamed to what no reader takes).
    setup.repo.write("services/README.md", "moved to another repository\n");
    setup.repo.git(&["rm", "-q", "services/web.yaml", "services/api.yaml"]);
    let empty = setup.repo.commit("services moved");
    let plan = setup.expect(0, "plan", &[])?;
    assert!(plan.contains("Plan: 0 to add, 0 to change, 2 to destroy."), "{plan}");
    assert!(plan.contains("Warning: this plan destroys every service"), "{plan}");
    let output = setup.run("apply", &[])?;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refusing to destroy every service (2)"), "{stderr}");
    assert_eq!(setup.status()?, before, "the refused apply changed the maps");
    assert_eq!(setup.sandbox.probe_tcp("10.96.0.10:80", 5)?.replies.get("b11"), Some(&5));

    let output = setup.expect(0, "apply", &["--allow-destroy-all"])?;
    assert!(output.contains("0 added, 0 changed, 2 destroyed"), "{output}");
    let status = setup.status()?;
    assert_eq!((&status["services"], &status["revision"]), (&0.into(), &empty.as_str().into()));
    Ok(())
}

#[test]
fn two_applies_at_once_both_succeed_and_the_later_plan_wins() -> Result<()> {
    let mut setup = Setup::new("racing")?;
    for (ip, name) in [("127.0.0.11", "b11"), ("127.0.0.12", "b12")] {
        setup.sandbox.serve_tcp(&format!("{ip}:8080"), name)?;
    }
    setup.repo.write("services/web.yaml", service("web", "10.96.0.10", &[("127.0.0.11", 1)]));
    setup.repo.commit("one");
    setup.expect(0, "apply", &[])?;
    for round in 0..5 {
        let backend = if round % 2 == 0 { "127.0.0.12" } else { "127.0.0.11" };
        setup.repo.write("services/web.yaml", service("web", "10.96.0.10", &[(backend, 1)]));
        let head = setup.repo.commit("next");
        let outputs = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..2).map(|_| scope.spawn(|| setup.run("apply", &[]))).collect();
            racers.into_iter().map(|r| r.join()).collect::<Vec<_>>()
        });
        for output in outputs {
            let output = output.map_err(|_| anyhow::anyhow!("apply thread panicked"))??;
            let text = String::from_utf8_lossy(&output.stdout);
            ensure!(
                output.status.success(),
                "round {round}: {text}{}",
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(!text.contains("stale"), "{text}");
        }
        assert_eq!(setup.status()?["revision"], head.as_str());
        let name = if round % 2 == 0 { "b12" } else { "b11" };
        assert_eq!(setup.sandbox.probe_tcp("10.96.0.10:80", 3)?.replies.get(name), Some(&3));
    }
    Ok(())
}

#[test]
fn a_second_pin_path_on_the_same_cgroup_is_refused() -> Result<()> {
    let mut setup = Setup::new("two-pins")?;
    setup.sandbox.serve_tcp("127.0.0.11:8080", "b11")?;
    setup.repo.write("services/web.yaml", service("web", "10.96.0.10", &[("127.0.0.11", 1)]));
    setup.repo.commit("web");
    setup.expect(0, "apply", &[])?;

    let other = format!("{}-other", setup.sandbox.pin_path().display());
    // Should the apply wrongly succeed, its data plane goes before the sandbox's cgroup does.
    struct Uninstall(String);
    impl Drop for Uninstall {
        fn drop(&mut self) {
            let _ = reconciler::dataplane::Dataplane::uninstall(std::path::Path::new(&self.0));
        }
    }
    let _other_pins = Uninstall(other.clone());
    let output = Command::new(reconciler_path()?)
        .args(["apply", "--repo", &setup.repo.url(), "--path", "services", "--cache-dir"])
        .arg(setup.cache.path())
        .arg("--cgroup")
        .arg(setup.sandbox.cgroup())
        .args(["--pin-path", &other])
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("already has a reconciler data plane"), "{stderr}");
    assert!(stderr.contains(&setup.sandbox.pin_path().display().to_string()), "{stderr}");
    ensure!(!std::path::Path::new(&other).exists(), "the refused apply left {other}");
    assert_eq!(setup.sandbox.attached_programs()?, DATA_PLANE_PROGRAMS);
    Ok(())
}

#[test]
fn a_commit_that_removes_a_backend_ends_the_connected_udp_sockets_sent_to_it() -> Result<()> {
    let mut setup = Setup::new("udp-commit")?;
    setup.sandbox.serve_udp("127.0.0.11:5300", "b11")?;
    setup.sandbox.serve_udp("127.0.0.12:5300", "b12")?;
    let dns = |backend: &str| {
        format!(
            "apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {{name: dns}}\n\
             spec:\n  vip: 10.96.0.53\n  ports: [{{port: 53, protocol: UDP, targetPort: 5300}}]\n\
             \x20 backends: [{{address: {backend}}}]\n"
        )
    };
    setup.repo.write("services/dns.yaml", dns("127.0.0.11"));
    setup.repo.commit("dns on b11");
    setup.expect(0, "apply", &[])?;

    // A client with a connected UDP socket, waiting for its next reply.
    let mut client = setup.sandbox.connected_udp_client("10.96.0.53:53")?;
    assert_eq!(client.line()?, "b11");

    setup.repo.write("services/dns.yaml", dns("127.0.0.12"));
    setup.repo.commit("dns moves to b12");
    let output = setup.expect(0, "apply", &["--output", "json"])?;
    let report: serde_json::Value = serde_json::from_str(&output)?;
    assert_eq!(report["result"]["sockets_destroyed"], 1, "{report}");
    assert_eq!(client.finish()?, ["ECONNABORTED"]);
    Ok(())
}

#[test]
fn an_excluded_cgroup_reaches_the_vip_untouched_while_its_sibling_is_translated() -> Result<()> {
    let mut setup = Setup::new("exclude")?;
    setup.sandbox.serve_tcp("127.0.0.11:8080", "backend")?;
    // The VIP itself answers in the namespace, so an untouched connect shows where it went.
    setup.sandbox.run(&["ip", "addr", "add", "10.96.0.10/32", "dev", "lo"])?;
    setup.sandbox.serve_tcp("10.96.0.10:80", "vip")?;
    let clients = setup.sandbox.client_cgroups(2)?;
    let (excluded, sibling) = (&clients[0], &clients[1]);
    setup.repo.write("services/web.yaml", service("web", "10.96.0.10", &[("127.0.0.11", 1)]));
    setup.repo.commit("web");
    let excluded_arg = excluded.display().to_string();
    setup.expect(0, "apply", &["--exclude-cgroup", &excluded_arg])?;
    let status = setup.status()?;
    ensure!(status["excluded"].as_array().map(Vec::len) == Some(1), "{status}");

    // A process in the excluded subtree's child too: the subtree, not the one directory.
    let grandchild = excluded.join("sidecar");
    std::fs::create_dir(&grandchild)?;
    let replies = setup.sandbox.connect_from_cgroups(
        "10.96.0.10:80",
        5,
        &[excluded.clone(), grandchild.clone(), sibling.clone()],
    );
    std::fs::remove_dir(&grandchild)?;
    let replies: Vec<Vec<String>> = replies?.into_iter().map(|r| r.replies).collect();
    ensure!(
        replies
            == [
                vec!["vip".to_owned(); 5],
                vec!["vip".to_owned(); 5],
                vec!["backend".to_owned(); 5]
            ],
        "{replies:?}"
    );

    // An apply without the flag keeps the list; an empty list translates everyone again.
    setup.expect(0, "apply", &[])?;
    ensure!(setup.status()?["excluded"].as_array().map(Vec::len) == Some(1));
    setup.expect(0, "apply", &["--no-exclude"])?;
    let replies =
        setup.sandbox.connect_from_cgroups("10.96.0.10:80", 3, std::slice::from_ref(excluded))?;
    ensure!(replies[0].replies == ["backend"; 3], "{replies:?}");
    Ok(())
}
