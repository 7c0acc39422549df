//! Slow start with the real daemon: a backend that a commit adds starts with a small share of
//! the connects, growing to its weight's share over the window, one atomic apply per step.
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use reconciler::{daemon::http::request, dataplane::Dataplane};
use reconciler_tests::{
    netns_daemon::{names, plan_by_hand_unchanged, served_repo, settled, Daemon},
    wait_for, Sandbox,
};

const VIP: &str = "10.96.0.10:80";
const WINDOW_S: u64 = 20;

fn web(backends: &[&str]) -> String {
    let mut text = format!(
        "apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  \
         vip: 10.96.0.10\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n  \
         slowStart: {{windowSeconds: {WINDOW_S}}}\n  backends:\n"
    );
    for backend in backends {
        text.push_str(&format!("    - {{address: {backend}}}\n"));
    }
    text
}

/// Connects through the VIP until `until`: (connects answered by `name`, all answered).
fn share_until(sandbox: &Sandbox, name: &str, until: Instant) -> Result<(u64, u64)> {
    let (mut hits, mut total) = (0, 0);
    while Instant::now() < until {
        let result = sandbox.probe_tcp(VIP, 20)?;
        anyhow::ensure!(result.errors.is_empty(), "{result:?}");
        hits += result.replies.get(name).copied().unwrap_or(0);
        total += result.replies.values().sum::<u64>();
    }
    Ok((hits, total))
}

#[test]
fn a_new_backend_ramps_from_a_small_share_to_its_full_share_over_the_window() -> Result<()> {
    let mut sandbox = Sandbox::new("slow-start")?;
    for i in 11..=13 {
        sandbox.serve_tcp(&format!("127.0.0.{i}:8080"), &format!("b{i}"))?;
    }
    let (work, served, bare) = served_repo(&web(&["127.0.0.11", "127.0.0.12"]))?;
    let daemon = Daemon::start(&sandbox, &bare)?;
    assert_eq!(settled(&sandbox, VIP)?, names(&["b11", "b12"]));

    // A commit adds b13: it joins with a small share.
    work.write("services/web.yaml", web(&["127.0.0.11", "127.0.0.12", "127.0.0.13"]));
    work.commit("b13 joins");
    work.git(&["push", "-q", "origin", "HEAD"]);
    let listen = daemon.listen.clone();
    sandbox.in_netns(move || Ok(request(&listen, "POST", "/reconcile")?.0))?;
    wait_for("b13 in the maps", Duration::from_secs(15), || {
        let live = Dataplane::open(sandbox.pin_path()).ok()?.read_live().ok()?.state;
        live.backends.values().any(|b| b.addr.to_string() == "127.0.0.13:8080").then_some(())
    })
    .with_context(|| daemon.log())?;
    let joined = Instant::now();
    let ramping = daemon.status(&sandbox)?.slow_start;
    assert!(ramping.iter().any(|r| r.backend.to_string() == "127.0.0.13:8080"), "{ramping:?}");

    // The first quarter of the window: at most about a quarter of its weight's share (1/3).
    let quarter = joined + Duration::from_secs(WINDOW_S / 4);
    let (hits, total) = share_until(&sandbox, "b13", quarter)?;
    let share = hits as f64 / total as f64;
    eprintln!("first quarter: b13 took {hits} of {total}");
    assert!(share <= 1.0 / 3.0 / 4.0 * 1.5, "b13 took {hits} of {total} in the first quarter");

    // Meanwhile a plan by hand shows the ramp, and nothing to change (no drift).
    let text = plan_by_hand_unchanged(&sandbox, &bare, served.path())?;
    assert!(text.contains("Slow start") && text.contains("127.0.0.13:8080"), "{text}");

    // After the window: its full share, and the ramp is over.
    wait_for("the ramp to end", Duration::from_secs(WINDOW_S + 10), || {
        daemon.status(&sandbox).ok()?.slow_start.is_empty().then_some(())
    })
    .with_context(|| daemon.log())?;
    // The maps are a direct apply's again: three slots, one each, and no ramp recorded.
    wait_for("the last step's apply", Duration::from_secs(10), || {
        let live = Dataplane::open(sandbox.pin_path()).ok()?.read_live().ok()?.state;
        let slots: Vec<u32> = live.services.values().map(|s| s.slot_count).collect();
        (slots == [3] && live.ramps.is_empty()).then_some(())
    })
    .with_context(|| daemon.log())?;
    let full = share_until(&sandbox, "b13", Instant::now() + Duration::from_secs(2))?;
    eprintln!("after the window: b13 took {} of {}", full.0, full.1);
    let share = full.0 as f64 / full.1 as f64;
    assert!((0.25..=0.42).contains(&share), "b13 took {} of {} after the window", full.0, full.1);
    assert!(daemon.log().contains("ramping up (slow start)"), "{}", daemon.log());
    Ok(())
}
