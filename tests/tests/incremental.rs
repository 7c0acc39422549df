//! The incremental path against the full path: for random sequences of commits to a real
//! repository, one data plane reconciled incrementally (a memo kept between runs, as the
//! daemon keeps it) and one by reading everything every time must hold the same entries in
//! both sets, at the same generation, after the same plans. Plus: a damaged memo file is
//! ignored and rebuilt, and a memo that lies about the maps is caught before any write.
use std::collections::BTreeMap;

use anyhow::{ensure, Result};
use reconciler::{
    dataplane::{Dataplane, Status},
    memo::Memo,
    pipeline::{ApplyOptions, Error, PlanOptions, Session},
};
use reconciler_core::{
    plan::{render_text, Paint, Plan},
    source::{FetchTimeouts, GitSpec, SourceSpec},
    state::MapState,
    validate::Policy,
};
use reconciler_tests::{
    git::Repo,
    gitops::{service, Setup},
    Sandbox,
};

/// Sequences in the property test, and commits in each.
const SEQUENCES: u64 = 200;
const COMMITS: usize = 6;

/// A small deterministic generator (xorshift64*), seeded per sequence, so a failure names
/// the seed that reproduces it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[derive(Clone, Debug)]
struct Svc {
    name: String,
    vip: u32,
    file: String,
    two_ports: bool,
    maglev: bool,
    /// (last octet, weight, state)
    backends: Vec<(u8, u32, &'static str)>,
}

impl Svc {
    fn yaml(&self) -> String {
        let ports = if self.two_ports {
            "[{name: http, port: 80, targetPort: 8080}, {name: dns, port: 53, protocol: UDP}]"
        } else {
            "[{port: 80, targetPort: 8080}]"
        };
        let mut text = format!(
            "apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {{name: {}}}\n\
             spec:\n  vip: 10.96.{}.{}\n  ports: {ports}\n  backends:\n",
            self.name,
            self.vip / 250,
            self.vip % 250 + 1
        );
        for (octet, weight, state) in &self.backends {
            text.push_str(&format!(
                "    - {{address: 10.1.{}.{octet}, weight: {weight}, state: {state}}}\n",
                self.vip % 250
            ));
        }
        if self.maglev {
            text.push_str("  loadBalancing: {algorithm: maglev}\n");
        }
        text
    }
}

/// The repository's services and how they are laid out in files.
struct World {
    services: Vec<Svc>,
    next_id: u32,
}

impl World {
    fn new(rng: &mut Rng) -> World {
        let mut world = World { services: Vec::new(), next_id: 0 };
        for _ in 0..3 + rng.below(5) {
            world.add(rng);
        }
        world
    }

    fn add(&mut self, rng: &mut Rng) {
        self.next_id += 1;
        let id = self.next_id;
        let count = 1 + rng.below(4) as u8;
        let backends: Vec<_> =
            (1..=count).map(|o| (o, 1 + rng.below(3) as u32, "active")).collect();
        self.services.push(Svc {
            name: format!("svc-{id}"),
            vip: id,
            file: format!("services/team-{}/defs.yaml", rng.below(3)),
            two_ports: rng.below(4) == 0,
            maglev: rng.below(4) == 0,
            backends,
        });
    }

    /// One random change; returns what it was, for the failure message.
    fn change(&mut self, rng: &mut Rng) -> String {
        let count = self.services.len();
        let i = rng.below(count);
        match rng.below(9) {
            0 => {
                self.add(rng);
                "add a service".into()
            }
            1 if count > 1 => format!("remove {}", self.services.remove(i).name),
            2 => {
                self.next_id += 1;
                let new = format!("svc-{}", self.next_id);
                let svc = &mut self.services[i];
                let old = std::mem::replace(&mut svc.name, new.clone());
                format!("rename {old} to {new}")
            }
            3 => {
                let svc = &mut self.services[i];
                let octet = svc.backends.iter().map(|b| b.0).max().unwrap_or(0) + 1;
                svc.backends.push((octet, 1 + rng.below(3) as u32, "active"));
                format!("{}: add a backend", svc.name)
            }
            4 if self.services[i].backends.len() > 1 => {
                let svc = &mut self.services[i];
                let at = rng.below(svc.backends.len());
                svc.backends.remove(at);
                format!("{}: remove a backend", svc.name)
            }
            5 => {
                let svc = &mut self.services[i];
                let at = rng.below(svc.backends.len());
                svc.backends[at].1 = 1 + rng.below(4) as u32;
                svc.backends[at].2 = ["active", "draining", "maintenance"][rng.below(3)];
                format!("{}: weight or state of a backend", svc.name)
            }
            6 => {
                let svc = &mut self.services[i];
                svc.file = format!("services/moved-{}.yaml", rng.below(4));
                format!("{}: moved to {}", svc.name, svc.file)
            }
            7 => {
                // A whole file renamed: same blob, new path.
                let from = self.services[i].file.clone();
                let to = format!("services/renamed-{}.yaml", rng.below(100));
                for svc in self.services.iter_mut().filter(|s| s.file == from) {
                    svc.file = to.clone();
                }
                format!("{from} renamed to {to}")
            }
            _ => {
                let svc = &mut self.services[i];
                svc.maglev = !svc.maglev;
                format!("{}: maglev {}", svc.name, svc.maglev)
            }
        }
    }

    /// Writes every file afresh (files with no service left are removed) and commits.
    fn commit(&self, repo: &Repo, message: &str) -> String {
        let _ = std::fs::remove_dir_all(repo.path().join("services"));
        let mut files: BTreeMap<&str, String> = BTreeMap::new();
        for svc in &self.services {
            let text = files.entry(&svc.file).or_default();
            text.push_str("---\n");
            text.push_str(&svc.yaml());
        }
        for (file, text) in files {
            repo.write(file, text);
        }
        repo.commit(message)
    }
}

/// One data plane and how it is reconciled.
struct Side {
    sandbox: Sandbox,
    /// `Some`: the incremental path, with the memo kept in memory between runs.
    memo: Option<Memo>,
    incremental_plans: usize,
}

impl Side {
    /// Plans and applies `spec`; returns the plan, or the error for an invalid commit.
    fn reconcile(&mut self, spec: &SourceSpec) -> Result<std::result::Result<Plan, Error>> {
        let incremental = self.memo.is_some();
        // The full path: a session with an empty memo, reading everything, dropped after.
        let memo = self.memo.take().unwrap_or_default();
        let pin_path = self.sandbox.pin_path();
        let mut session = Session::new(spec.clone(), pin_path, Policy::default()).with_memo(memo);
        let result = self.reconcile_in(&mut session, !incremental);
        if incremental {
            self.memo = Some(session.take_memo());
        }
        result
    }

    fn reconcile_in(
        &mut self,
        session: &mut Session,
        refresh: bool,
    ) -> Result<std::result::Result<Plan, Error>> {
        let desired = match session.load() {
            Ok(desired) => desired,
            Err(e) => return Ok(Err(e)),
        };
        let plan = session.plan(&desired, PlanOptions::refresh(refresh))?;
        self.incremental_plans += usize::from(plan.touched.is_some());
        let options = ApplyOptions {
            cgroup: Some(self.sandbox.cgroup().to_owned()),
            allow_destroy_all: true,
            ..ApplyOptions::default()
        };
        session.apply(&plan, Some(&desired), options)?;
        Ok(Ok(plan))
    }

    fn maps(&self) -> Result<(Status, [MapState; 2])> {
        let (mut status, sets) = Dataplane::open(self.sandbox.pin_path())?.read_both_sets()?;
        status.applied_at_unix = None;
        status.cgroup_id = 0;
        Ok((status, sets))
    }
}

/// A plan as people see it, without the line that says how it was read and with the data
/// plane's pin path (the two sides' differ) left out.
fn shown(plan: &Plan) -> String {
    let text = render_text(plan, Paint::NONE).replace(&plan.context.pin_path, "PIN");
    text.lines().filter(|line| !line.starts_with("Read: ")).collect::<Vec<_>>().join("\n")
}

#[test]
fn incremental_and_full_paths_leave_the_same_maps_over_200_random_sequences() -> Result<()> {
    let mut incremental =
        Side { sandbox: Sandbox::new("incr")?, memo: Some(Memo::default()), incremental_plans: 0 };
    let mut full = Side { sandbox: Sandbox::new("full")?, memo: None, incremental_plans: 0 };
    let cache = tempfile::tempdir()?;
    let mut valid_commits = 0;
    for seed in 1..=SEQUENCES {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let repo = Repo::new();
        let mut world = World::new(&mut rng);
        let mut history = vec!["initial services".to_owned()];
        for step in 0..COMMITS {
            let invalid = step > 0 && rng.below(6) == 0;
            let message = if invalid {
                // Two services on one VIP: refused by both paths, maps untouched.
                let mut broken = World { services: world.services.clone(), next_id: world.next_id };
                let mut copy = broken.services[0].clone();
                copy.name = "duplicate-vip".into();
                broken.services.push(copy);
                broken.commit(&repo, "invalid");
                "invalid: a duplicate VIP".to_owned()
            } else {
                let change = if step == 0 { history[0].clone() } else { world.change(&mut rng) };
                world.commit(&repo, &change);
                change
            };
            history.push(message);
            let spec = services_of(&repo, cache.path());
            let context = || format!("seed {seed}, after: {}", history.join("; "));
            let (a, b) = (incremental.reconcile(&spec)?, full.reconcile(&spec)?);
            match (&a, &b) {
                (Ok(a), Ok(b)) => {
                    valid_commits += 1;
                    ensure!(shown(a) == shown(b), "{}\n{}\n---\n{}", context(), shown(a), shown(b));
                    ensure!(
                        (a.summary, a.entry_changes, a.map_writes)
                            == (b.summary, b.entry_changes, b.map_writes),
                        "{}",
                        context()
                    );
                }
                (Err(Error::Invalid { .. }), Err(Error::Invalid { .. })) if invalid => {}
                _ => anyhow::bail!("{}: one path failed: {:?} / {:?}", context(), a.err(), b.err()),
            }
            let (maps_a, maps_b) = (incremental.maps()?, full.maps()?);
            ensure!(maps_a == maps_b, "{}: the maps differ", context());
        }
    }
    // The property says nothing unless the incremental path was the one taken.
    ensure!(
        incremental.incremental_plans * 10 >= valid_commits * 7,
        "only {} of {valid_commits} plans were incremental",
        incremental.incremental_plans
    );
    Ok(())
}

/// The `services/` directory of `repo`'s default branch, fetched into `cache`.
fn services_of(repo: &Repo, cache: &std::path::Path) -> SourceSpec {
    SourceSpec::Git(GitSpec {
        url: repo.url(),
        reference: None,
        subdir: Some("services".into()),
        cache_dir: cache.to_owned(),
        ssh_key: None,
        verify: None,
        timeouts: FetchTimeouts::default(),
    })
}

/// The memo in `file`, which must be usable.
fn load_memo(file: &std::path::Path) -> Result<Memo> {
    let (memo, problem) = Memo::load(file);
    ensure!(problem.is_none(), "{problem:?}");
    Ok(memo)
}

/// The memo file of `setup` (there is one per data plane and source).
fn memo_file(setup: &Setup) -> Result<std::path::PathBuf> {
    let dir = setup.cache.path().join("memo");
    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .filter(|p| p.as_ref().map_or(true, |p| p.extension().is_some_and(|x| x == "bin")))
        .collect::<Result<_, _>>()?;
    ensure!(files.len() == 1, "memo files in {}: {files:?}", dir.display());
    Ok(files.remove(0))
}

/// A repository with services `web` and `api`, applied, and a second commit that changes
/// one backend of `web` (not yet applied); returns the setup.
fn applied_with_a_change_pending(test: &str) -> Result<Setup> {
    let setup = Setup::new(test)?;
    let api = service("api", "10.96.0.20", &[("127.0.0.21", 1), ("127.0.0.22", 1)]);
    setup.repo.write("services/api.yaml", &api);
    setup.repo.write("services/web.yaml", service("web", "10.96.0.10", &[("127.0.0.11", 1)]));
    setup.repo.commit("web and api");
    setup.expect(0, "apply", &[])?;
    setup.repo.write("services/web.yaml", service("web", "10.96.0.10", &[("127.0.0.12", 2)]));
    setup.repo.commit("web: another backend");
    Ok(setup)
}

/// `plan` of the pending change, checked against `plan --refresh`; whether it was
/// incremental.
fn plan_matches_refresh(setup: &Setup) -> Result<bool> {
    let plan = setup.run("plan", &["--detailed-exitcode"])?;
    let text = String::from_utf8_lossy(&plan.stdout).into_owned();
    ensure!(plan.status.code() == Some(2), "{text}\n{}", String::from_utf8_lossy(&plan.stderr));
    let full = setup.expect(2, "plan", &["--detailed-exitcode", "--refresh"])?;
    let without_read =
        |t: &str| t.lines().filter(|l| !l.starts_with("Read: ")).collect::<Vec<_>>().join("\n");
    ensure!(without_read(&text) == without_read(&full), "{text}\n---\n{full}");
    ensure!(text.contains("~ service \"web\""), "{text}");
    Ok(text.contains("\nRead: "))
}

#[test]
fn a_damaged_or_foreign_memo_is_ignored_and_rewritten() -> Result<()> {
    let setup = applied_with_a_change_pending("memo-damaged")?;
    ensure!(plan_matches_refresh(&setup)?, "the first plan after an apply is incremental");
    let file = memo_file(&setup)?;
    let good = std::fs::read(&file)?;
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x55;
    let mut other_build = good.clone();
    other_build[16] ^= 0x01;
    for (what, bytes) in [
        ("one byte flipped", flipped),
        ("cut short", good[..good.len() / 3].to_vec()),
        ("not a memo at all", b"garbage".to_vec()),
        ("another build's", other_build),
        ("empty", Vec::new()),
    ] {
        std::fs::write(&file, &bytes)?;
        let plan = setup.run("plan", &["--detailed-exitcode"])?;
        let (out, err) =
            (String::from_utf8_lossy(&plan.stdout), String::from_utf8_lossy(&plan.stderr));
        ensure!(plan.status.code() == Some(2), "{what}: {out}\n{err}");
        ensure!(!out.contains("\nRead: "), "{what}: a damaged memo was used:\n{out}");
        ensure!(err.contains("warning: ") && err.contains("ignored"), "{what}: {err}");
        ensure!(out.contains("~ service \"web\""), "{what}: {out}");
    }
    // 1.5 GiB of zeros (sparse): refused by its first bytes, not read whole.
    std::fs::File::create(&file)?.set_len(3 << 29)?;
    let plan = setup.run("plan", &[])?;
    let err = String::from_utf8_lossy(&plan.stderr);
    ensure!(err.contains("not a memo file; ignored"), "{err}");
    setup.expect(0, "apply", &[])?;
    setup.repo.write("services/web.yaml", service("web", "10.96.0.10", &[("127.0.0.13", 1)]));
    setup.repo.commit("web: a third backend");
    ensure!(plan_matches_refresh(&setup)?, "the memo an apply rewrote is used again");
    Ok(())
}

/// A well-formed memo that says web's file parsed to another backend, written without this
/// node's key (by the same code on another node, so its checksum is right): ignored, with a
/// warning, and what the commit holds is planned and applied.
#[test]
fn a_memo_written_without_the_nodes_key_is_ignored() -> Result<()> {
    let setup = applied_with_a_change_pending("memo-forged")?;
    ensure!(plan_matches_refresh(&setup)?, "the first plan after an apply is incremental");
    let file = memo_file(&setup)?;
    let mut memo = load_memo(&file)?;
    for services in memo.parsed.values_mut() {
        for service in services.iter_mut().filter(|s| s.metadata.name == "web") {
            let mut forged = (**service).clone();
            for backend in &mut forged.spec.backends {
                backend.address = "127.0.0.66".parse()?;
            }
            *service = std::sync::Arc::new(forged);
        }
    }
    let elsewhere = tempfile::tempdir()?;
    let forged = elsewhere.path().join("memo.bin");
    memo.save(&forged)?;
    std::fs::copy(&forged, &file)?;
    let plan = setup.run("plan", &["--detailed-exitcode"])?;
    let (out, err) = (String::from_utf8_lossy(&plan.stdout), String::from_utf8_lossy(&plan.stderr));
    ensure!(err.contains("not written on this node") && err.contains("ignored"), "{err}");
    ensure!(!out.contains("127.0.0.66") && out.contains("127.0.0.12"), "{out}");
    setup.expect(0, "apply", &[])?;
    let after = setup.expect(0, "plan", &["--detailed-exitcode", "--refresh"])?;
    ensure!(after.contains("No changes."), "{after}");
    Ok(())
}

#[test]
fn a_memo_that_lies_about_the_changed_services_is_caught_before_any_write() -> Result<()> {
    let setup = applied_with_a_change_pending("memo-lies")?;
    let file = memo_file(&setup)?;
    let mut memo = load_memo(&file)?;
    // A well-formed memo whose record says web's backend is elsewhere: the maps say not.
    let record = memo.record.as_mut().ok_or_else(|| anyhow::anyhow!("no record"))?;
    for backend in record.state.backends.values_mut() {
        if backend.addr.ip().to_string() == "127.0.0.11" {
            backend.addr.set_ip("127.0.0.99".parse()?);
        }
    }
    memo.save(&file)?;
    ensure!(!plan_matches_refresh(&setup)?, "the lying record was not caught by the plan");
    let applied = setup.expect(0, "apply", &[])?;
    ensure!(applied.contains("Apply complete! Services: 0 added, 1 changed"), "{applied}");
    let after = setup.expect(0, "plan", &["--detailed-exitcode", "--refresh"])?;
    ensure!(after.contains("No changes."), "{after}");
    Ok(())
}

#[test]
fn an_apply_by_someone_else_sends_the_next_plan_down_the_full_path() -> Result<()> {
    let setup = applied_with_a_change_pending("memo-moved")?;
    // Another cache directory, so another memo: its apply moves the generation.
    let other_cache = tempfile::tempdir()?;
    let mut command = std::process::Command::new(reconciler_tests::reconciler_path()?);
    command.args(["apply", "--repo", &setup.repo.url(), "--path", "services"]);
    command.arg("--cache-dir").arg(other_cache.path());
    command.arg("--pin-path").arg(setup.sandbox.pin_path());
    let output = command.output()?;
    ensure!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let plan = setup.expect(0, "plan", &["--detailed-exitcode"])?;
    ensure!(plan.contains("No changes.") && !plan.contains("\nRead: "), "{plan}");
    // That full plan found the maps as the commit says: the memo records them again.
    setup.repo.write("services/web.yaml", service("web", "10.96.0.10", &[("127.0.0.14", 1)]));
    setup.repo.commit("web: yet another backend");
    ensure!(plan_matches_refresh(&setup)?, "the plan after a full one is incremental again");
    Ok(())
}

#[test]
fn an_incremental_apply_whose_entries_moved_since_the_plan_writes_nothing() -> Result<()> {
    let setup = applied_with_a_change_pending("memo-apply-guard")?;
    let spec = services_of(&setup.repo, setup.cache.path());
    let pin_path = setup.sandbox.pin_path();
    let memo = load_memo(&memo_file(&setup)?)?;
    let mut session = Session::new(spec, pin_path, Policy::default()).with_memo(memo);
    let desired = session.load()?;
    let mut plan = session.plan(&desired, PlanOptions::refresh(false))?;
    let touched = plan.touched.as_mut().ok_or_else(|| anyhow::anyhow!("not incremental"))?;
    // As if web's entries had changed between plan and apply (by hand, at the same
    // generation): the apply reads them again under its lock.
    for backend in touched.backends.values_mut() {
        backend.addr.set_port(9999);
    }
    let before = Dataplane::open(pin_path)?.read_both_sets()?;
    match session.apply(&plan, None, ApplyOptions::default()) {
        Err(Error::Unconfirmed { .. }) => {}
        other => anyhow::bail!("applied against entries it did not confirm: {other:?}"),
    }
    ensure!(Dataplane::open(pin_path)?.read_both_sets()? == before, "the apply wrote something");
    Ok(())
}
