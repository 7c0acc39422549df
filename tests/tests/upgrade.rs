//! Upgrades in place: a data plane installed by the build of an earlier map layout (their BPF
//! objects are kept in tests/fixtures/) is upgraded by this build while clients connect
//! through it, with no failed connect and the state it serves unchanged.
use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{ensure, Context as _, Result};
use aya::{
    maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues},
    programs::{links::FdLink, CgroupAttachMode, CgroupSockAddr},
    EbpfLoader,
};
use reconciler::dataplane::{self, Dataplane, Upgraded};
use reconciler_common::{
    event, ipv4_mapped, Backend, BackendCounters, BackendKey, Metadata, ServiceKey, ServiceValue,
    SlotKey, LAYOUT_VERSION, PROTO_TCP, REVISION_LEN,
};
use reconciler_tests::{bpftool, one_service, wait_for, Sandbox, DATA_PLANE_PROGRAMS};

/// A layout this project has shipped: its number, the object its build loaded, its maps and
/// its programs.
struct Layout {
    version: u32,
    object: &'static [u8],
    maps: &'static [&'static str],
    programs: &'static [&'static str],
}

const LAYOUT1: Layout = Layout {
    version: 1,
    object: include_bytes!("../fixtures/reconciler-ebpf-layout1.o"),
    maps: &[
        "ACTIVE_SET",
        "SERVICES",
        "SLOTS",
        "BACKENDS",
        "BACKEND_STATS",
        "METADATA",
        "SERVICE_NAMES",
    ],
    programs: &["connect4", "connect6"],
};

const LAYOUT2: Layout = Layout {
    version: 2,
    object: include_bytes!("../fixtures/reconciler-ebpf-layout2.o"),
    maps: &[
        "ACTIVE_SET",
        "SERVICES",
        "SLOTS",
        "BACKENDS",
        "BACKEND_STATS",
        "METADATA",
        "SERVICE_NAMES",
        "REVERSE",
        "EVENTS",
    ],
    programs: SOCK_ADDR_HOOKS,
};

/// The eight socket-address hooks, which layouts 2 to 6 attached; 7 added the `flows`
/// sock_ops program, the last.
const SOCK_ADDR_HOOKS: &[&str] = dataplane::PROGRAMS.split_at(8).0;

/// Layout 3's maps; layout 4 added `EXCLUDED`.
const LAYOUT3_MAPS: [&str; 16] = [
    "ACTIVE_SET",
    "SERVICES",
    "SLOTS",
    "BACKENDS",
    "BACKEND_COUNTS",
    "SERVICE_COUNTS",
    "METADATA",
    "SERVICE_NAMES",
    "REVERSE",
    "EVENTS",
    "AFFINITY",
    "AFFINITY_EVENTS",
    "TRACE",
    "TRACE_ON",
    "TRACE_DROPS",
    "HEALTH_EXCLUDED",
];

/// `base` and `extra` after it.
const fn appended<const N: usize, const M: usize>(
    base: [&'static str; N],
    extra: &'static str,
) -> [&'static str; M] {
    let mut all = [extra; M];
    let mut index = 0;
    while index < N {
        all[index] = base[index];
        index += 1;
    }
    all
}

const LAYOUT3: Layout = Layout {
    version: 3,
    object: include_bytes!("../fixtures/reconciler-ebpf-layout3.o"),
    maps: &LAYOUT3_MAPS,
    programs: SOCK_ADDR_HOOKS,
};

const LAYOUT4_MAPS: [&str; 17] = appended(LAYOUT3_MAPS, "EXCLUDED");

const LAYOUT4: Layout = Layout {
    version: 4,
    object: include_bytes!("../fixtures/reconciler-ebpf-layout4.o"),
    maps: &LAYOUT4_MAPS,
    programs: SOCK_ADDR_HOOKS,
};

const LAYOUT5: Layout = Layout {
    version: 5,
    object: include_bytes!("../fixtures/reconciler-ebpf-layout5.o"),
    maps: &LAYOUT5_MAPS,
    programs: SOCK_ADDR_HOOKS,
};

const LAYOUT5_MAPS: [&str; 19] = appended::<18, 19>(appended(LAYOUT4_MAPS, "VIPS"), "SOCKETS");

/// Layout 6's maps: layout 5's with the per-CPU counters replaced by `*_TOTALS`.
const LAYOUT6: Layout = Layout {
    version: 6,
    object: include_bytes!("../fixtures/reconciler-ebpf-layout6.o"),
    maps: &renamed(
        renamed(LAYOUT5_MAPS, "BACKEND_COUNTS", "BACKEND_TOTALS"),
        "SERVICE_COUNTS",
        "SERVICE_TOTALS",
    ),
    programs: SOCK_ADDR_HOOKS,
};

/// `names` with `from` renamed `to`.
const fn renamed<const N: usize>(
    mut names: [&'static str; N],
    from: &'static str,
    to: &'static str,
) -> [&'static str; N] {
    let mut index = 0;
    while index < N {
        if names[index].len() == from.len() && starts_with(names[index], from) {
            names[index] = to;
        }
        index += 1;
    }
    names
}

/// Whether `text` starts with `prefix`, in a const context.
const fn starts_with(text: &str, prefix: &str) -> bool {
    let (text, prefix) = (text.as_bytes(), prefix.as_bytes());
    if prefix.len() > text.len() {
        return false;
    }
    let mut index = 0;
    while index < prefix.len() {
        if text[index] != prefix[index] {
            return false;
        }
        index += 1;
    }
    true
}

/// Refusals for want of a backend that `install_old` writes into an old `EVENTS`, which the
/// upgrade must carry over.
const OLD_NO_BACKEND: u64 = 7;

/// Translations to backend 1 that `layout`'s own programs counted: in `BACKEND_STATS`
/// before layout 3, in `BACKEND_COUNTS` since, in `BACKEND_TOTALS` since layout 6.
fn old_translations(layout: &Layout, pin: &Path) -> Result<u64> {
    if layout.version >= 6 {
        let totals = MapData::from_pin(pin.join("BACKEND_TOTALS"))?;
        let totals: Array<MapData, BackendCounters> = Map::from_map_data(totals)?.try_into()?;
        return Ok(totals.get(&1, 0)?.translations);
    }
    if layout.version < 3 {
        let stats = MapData::from_pin(pin.join("BACKEND_STATS"))?;
        let stats: PerCpuArray<MapData, u64> = Map::from_map_data(stats)?.try_into()?;
        return Ok(stats.get(&1, 0)?.iter().sum());
    }
    let counts = MapData::from_pin(pin.join("BACKEND_COUNTS"))?;
    let counts: PerCpuArray<MapData, BackendCounters> = Map::from_map_data(counts)?.try_into()?;
    Ok(counts.get(&1, 0)?.iter().map(|c| c.translations).sum())
}

fn v4(addr: SocketAddr) -> Result<(u32, u16)> {
    let SocketAddr::V4(addr) = addr else { anyhow::bail!("{addr} is not IPv4") };
    Ok((u32::from_ne_bytes(addr.ip().octets()), addr.port().to_be()))
}

/// Installs `layout`'s object at the sandbox's pin path the way its build did (maps pinned
/// first, then the links), serving `vip` with one `backend` (service 1, backend 1, set 0).
fn install_old(
    layout: &Layout,
    sandbox: &Sandbox,
    vip: SocketAddr,
    backend: SocketAddr,
) -> Result<()> {
    let pin = sandbox.pin_path();
    std::fs::create_dir(pin)?;
    std::fs::set_permissions(pin, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let mut ebpf = EbpfLoader::new().load(layout.object)?;
    for name in layout.maps {
        ebpf.map(name).context(name)?.pin(pin.join(name))?;
    }
    let (vip_ip, vip_port) = v4(vip)?;
    let (backend_ip, backend_port) = v4(backend)?;
    let mut services: HashMap<&mut MapData, ServiceKey, ServiceValue> =
        ebpf.map_mut("SERVICES").context("SERVICES")?.try_into()?;
    let key = ServiceKey { addr: ipv4_mapped(vip_ip), port: vip_port, protocol: PROTO_TCP, set: 0 };
    let value = ServiceValue {
        service_id: 1,
        slot_count: 1,
        algorithm: 0,
        // Layout 1's padding, zero: what later layouts read as their defaults.
        maglev_client: 0,
        affinity_client: 0,
        _pad: 0,
        affinity_timeout_secs: 0,
    };
    services.insert(key, value, 0)?;
    let mut slots: HashMap<&mut MapData, SlotKey, u32> =
        ebpf.map_mut("SLOTS").context("SLOTS")?.try_into()?;
    slots.insert(SlotKey { service_id: 1, slot: 0, set: 0, _pad: [0; 3] }, 1, 0)?;
    let mut backends: HashMap<&mut MapData, BackendKey, Backend> =
        ebpf.map_mut("BACKENDS").context("BACKENDS")?.try_into()?;
    let entry = Backend {
        addr: ipv4_mapped(backend_ip),
        port: backend_port,
        state: 0,
        _pad: 0,
        service_id: 1,
    };
    backends.insert(BackendKey { backend_id: 1, set: 0, _pad: [0; 3] }, entry, 0)?;
    let mut metadata: Array<&mut MapData, Metadata> =
        ebpf.map_mut("METADATA").context("METADATA")?.try_into()?;
    let cgroup_id = std::fs::metadata(sandbox.cgroup())?;
    let record = Metadata {
        layout_version: layout.version,
        standby_dirty: 0,
        _pad: [0; 3],
        generation: 1,
        cgroup_id: std::os::unix::fs::MetadataExt::ino(&cgroup_id),
        applied_at_unix: 0,
        revision: [0; REVISION_LEN],
        revision_len: 0,
        _pad2: [0; 7],
    };
    metadata.set(0, record, 0)?;
    if layout.maps.contains(&"EVENTS") {
        let mut events: PerCpuArray<&mut MapData, u64> =
            ebpf.map_mut("EVENTS").context("EVENTS")?.try_into()?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let mut values = vec![0; cpus];
        values[0] = OLD_NO_BACKEND;
        events.set(event::NO_BACKEND, PerCpuValues::try_from(values)?, 0)?;
    }
    let cgroup = std::fs::File::open(sandbox.cgroup())?;
    for name in layout.programs {
        let program: &mut CgroupSockAddr = ebpf.program_mut(name).context(name)?.try_into()?;
        program.load()?;
        let link = program.attach(&cgroup, CgroupAttachMode::default())?;
        let link: FdLink = program.take_link(link)?.try_into()?;
        link.pin(pin.join(format!("link_{name}")))?;
    }
    Ok(())
}

fn map_id(pin: &Path, name: &str) -> Result<u32> {
    Ok(MapData::from_pin(pin.join(name))?.info()?.id())
}

#[test]
fn a_layout_1_data_plane_is_upgraded_in_place_with_no_failed_connect() -> Result<()> {
    // Every program beyond layout 1's two connect hooks.
    upgrade_under_load(&LAYOUT1, &dataplane::PROGRAMS[2..])
}

#[test]
fn a_layout_2_data_plane_is_upgraded_in_place_with_no_failed_connect() -> Result<()> {
    upgrade_under_load(&LAYOUT2, &["flows"])
}

#[test]
fn a_layout_3_data_plane_is_upgraded_in_place_with_no_failed_connect() -> Result<()> {
    upgrade_under_load(&LAYOUT3, &["flows"])
}

#[test]
fn a_layout_4_data_plane_is_upgraded_in_place_with_no_failed_connect() -> Result<()> {
    upgrade_under_load(&LAYOUT4, &["flows"])
}

#[test]
fn a_layout_5_data_plane_is_upgraded_in_place_with_no_failed_connect() -> Result<()> {
    upgrade_under_load(&LAYOUT5, &["flows"])
}

#[test]
fn a_layout_6_data_plane_is_upgraded_in_place_with_no_failed_connect() -> Result<()> {
    upgrade_under_load(&LAYOUT6, &["flows"])
}

/// Installs `layout`, upgrades it while three clients connect, and checks that no connect
/// failed, that every old hook's program was replaced and the `attached` ones added, and that
/// the maps and their state are the same.
fn upgrade_under_load(layout: &Layout, attached: &[&'static str]) -> Result<()> {
    let mut sandbox = Sandbox::new(&format!("upgrade-{}", layout.version))?;
    let backend = sandbox.serve_tcp("127.0.0.1:0", "b1")?;
    let vip: SocketAddr = "10.96.0.10:80".parse()?;
    install_old(layout, &sandbox, vip, backend)?;
    assert_eq!(sandbox.attached_programs()?, layout.programs.len());
    assert_eq!(sandbox.probe_tcp("10.96.0.10:80", 5)?.replies.get("b1"), Some(&5));
    // This build reads the old data plane only once it is upgraded.
    let err = Dataplane::open(sandbox.pin_path()).err().context("opened an old data plane")?;
    assert!(err.to_string().contains("upgrades it in place"), "{err}");
    let services_before = map_id(sandbox.pin_path(), "SERVICES")?;

    let scratch = tempfile::tempdir()?;
    let stop = scratch.path().join("stop");
    let probes: Vec<_> =
        (0..3).map(|_| sandbox.spawn_probe_until(&stop, "10.96.0.10:80")).collect::<Result<_>>()?;
    // The upgrade happens while connects flow: they go through the old programs (counted by
    // the old layout) before it, and through the new ones after it.
    wait_for("connects through the old programs", Duration::from_secs(10), || {
        (old_translations(layout, sandbox.pin_path()).ok()? > 0).then_some(())
    })?;
    let counted_before = old_translations(layout, sandbox.pin_path())?;
    let upgraded = dataplane::upgrade(sandbox.pin_path());
    if upgraded.is_ok() {
        let translations = || -> Option<u64> {
            let counted = Dataplane::open(sandbox.pin_path()).ok()?.backend_counters([1]).ok()?;
            Some(counted.get(&1)?.translations)
        };
        let at_upgrade = translations().unwrap_or(0);
        // The old programs' counts carried over (layout 1 and 2 counted elsewhere).
        if layout.version >= 3 {
            ensure!(at_upgrade >= counted_before, "{at_upgrade} < {counted_before} counted");
        }
        wait_for("connects through the new programs", Duration::from_secs(10), || {
            (translations()? > at_upgrade).then_some(())
        })?;
    }
    std::fs::write(&stop, "")?;
    let results: Vec<_> = probes.into_iter().map(|p| p.wait()).collect::<Result<_>>()?;
    let upgraded = upgraded?.context("nothing was upgraded")?;
    assert_eq!(
        upgraded,
        Upgraded {
            from_layout: layout.version,
            replaced: layout.programs.to_vec(),
            attached: attached.to_vec(),
        }
    );
    for result in &results {
        ensure!(result.errors.is_empty(), "a connect failed during the upgrade: {result:?}");
        ensure!(result.total() > 0, "a probe made no connects");
    }

    // The same maps, the same state, all hooks, the retired map's pin gone; and a second
    // upgrade has nothing to do.
    assert_eq!(map_id(sandbox.pin_path(), "SERVICES")?, services_before);
    for retired in ["BACKEND_STATS", "EVENTS_OUTGROWN", "BACKEND_COUNTS", "SERVICE_COUNTS"] {
        assert!(!sandbox.pin_path().join(retired).exists(), "the retired {retired} is pinned");
    }
    // The old counts carried over into the grown EVENTS, and VIPS filled from SERVICES: the
    // VIP is closed on its other ports.
    let carried = if layout.maps.contains(&"EVENTS") { OLD_NO_BACKEND } else { 0 };
    let upgraded_dataplane = Dataplane::open(sandbox.pin_path())?;
    assert_eq!(upgraded_dataplane.events()?.no_backend, carried);
    let other_port = sandbox.probe_tcp("10.96.0.10:81", 2)?;
    assert_eq!(other_port.errors.get("ECONNREFUSED"), Some(&2), "{other_port:?}");
    assert_eq!(upgraded_dataplane.events()?.unknown_port, 2);
    assert_eq!(sandbox.attached_programs()?, DATA_PLANE_PROGRAMS);
    let live = Dataplane::open(sandbox.pin_path())?.read_live()?;
    let mut expected = one_service("10.96.0.10:80", &[&backend.to_string()])?;
    expected.names.clear();
    assert_eq!(live.state, expected);
    assert_eq!(live.status.generation, 1);
    assert_eq!(dataplane::upgrade(sandbox.pin_path())?, None);
    assert_eq!(sandbox.probe_tcp("10.96.0.10:80", 5)?.replies.get("b1"), Some(&5));
    Ok(())
}

/// A repository with one service, `web`, on `vip` with backend `backend`.
fn web_repo(vip: SocketAddr, backend: SocketAddr) -> Result<reconciler_tests::git::Repo> {
    let repo = reconciler_tests::git::Repo::new();
    repo.write(
        "services/web.yaml",
        format!(
            "apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {{name: web}}\n\
             spec:\n  vip: {}\n  ports: [{{port: {}, targetPort: {}}}]\n\
             \x20 backends: [{{address: {}}}]\n",
            vip.ip(),
            vip.port(),
            backend.port(),
            backend.ip()
        ),
    );
    repo.commit("web");
    Ok(repo)
}

#[test]
fn apply_upgrades_a_layout_1_data_plane_before_it_plans() -> Result<()> {
    let mut sandbox = Sandbox::new("upgrade-cli")?;
    let backend = sandbox.serve_tcp("127.0.0.1:0", "b1")?;
    let vip: SocketAddr = "10.96.0.10:80".parse()?;
    install_old(&LAYOUT1, &sandbox, vip, backend)?;
    let repo = web_repo(vip, backend)?;
    let cache = tempfile::tempdir()?;
    let output = std::process::Command::new(reconciler_tests::reconciler_path()?)
        .args(["apply", "--repo", &repo.url(), "--cache-dir"])
        .arg(cache.path())
        .arg("--pin-path")
        .arg(sandbox.pin_path())
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.success(), "{stderr}");
    let upgraded = format!("in place from layout 1 to {LAYOUT_VERSION}");
    assert!(stderr.contains(&upgraded), "{stderr}");
    assert_eq!(sandbox.attached_programs()?, DATA_PLANE_PROGRAMS);
    assert_eq!(sandbox.probe_tcp("10.96.0.10:80", 5)?.replies.get("b1"), Some(&5));
    Ok(())
}

#[test]
fn the_daemon_upgrades_a_layout_1_data_plane_at_start() -> Result<()> {
    let mut sandbox = Sandbox::new("upgrade-daemon")?;
    let backend = sandbox.serve_tcp("127.0.0.1:0", "b1")?;
    let vip: SocketAddr = "10.96.0.10:80".parse()?;
    install_old(&LAYOUT1, &sandbox, vip, backend)?;
    let repo = web_repo(vip, backend)?;
    let dir = tempfile::tempdir()?;
    let listen = format!("{}:9469", reconciler_tests::git::loopback_address());
    let config = dir.path().join("node.yaml");
    std::fs::write(
        &config,
        format!(
            "source: {{url: {}, interval: 300ms, cacheDir: {}}}\n\
             dataplane: {{cgroup: {}, pinPath: {}}}\nlisten: {listen}\n",
            repo.url(),
            dir.path().join("cache").display(),
            sandbox.cgroup().display(),
            sandbox.pin_path().display()
        ),
    )?;
    let log = dir.path().join("daemon.log");
    let _daemon = reconciler_tests::Running(
        std::process::Command::new(reconciler_tests::reconciler_path()?)
            .args(["daemon", "--config"])
            .arg(&config)
            .stderr(std::fs::File::create(&log)?)
            .spawn()?,
    );
    let head = repo.git(&["rev-parse", "HEAD"]);
    let applied = wait_for("the daemon to apply HEAD", Duration::from_secs(20), || {
        let status = reconciler::daemon::http::request(&listen, "GET", "/status")
            .ok()
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok());
        status.filter(|s| s["applied_revision"] == head.as_str())
    });
    ensure!(applied.is_ok(), "not applied in 20 s:\n{}", std::fs::read_to_string(&log)?);
    let log = std::fs::read_to_string(&log)?;
    assert!(log.contains("upgraded the data plane in place"), "{log}");
    assert_eq!(sandbox.attached_programs()?, DATA_PLANE_PROGRAMS);
    assert_eq!(sandbox.probe_tcp("10.96.0.10:80", 5)?.replies.get("b1"), Some(&5));
    Ok(())
}

#[test]
fn a_pinned_map_whose_shape_changed_is_not_reused() -> Result<()> {
    let mut sandbox = Sandbox::new("upgrade-shape")?;
    let backend = sandbox.serve_tcp("127.0.0.1:0", "b1")?;
    install_old(&LAYOUT2, &sandbox, "10.96.0.10:80".parse()?, backend)?;
    // SERVICE_NAMES (which only user space reads) as some other build might have made it:
    // 4-byte names. (A map the programs use, replaced, is another's: `foreign_pins`.)
    let names = sandbox.pin_path().join("SERVICE_NAMES");
    std::fs::remove_file(&names)?;
    bpftool(
        &[
            &["map", "create"],
            &[names.to_str().context("path")?][..],
            &["type", "hash", "key", "4", "value", "4", "entries", "5", "name", "SERVICE_NAMES"],
        ]
        .concat(),
    )?;
    let err = dataplane::upgrade(sandbox.pin_path()).err().context("upgraded a changed map")?;
    let message = err.to_string();
    assert!(
        message.contains("pinned map SERVICE_NAMES (key 4 B, value 4 B, 5 entries)"),
        "{message}"
    );
    // Refused before anything was replaced: the old programs still serve.
    assert_eq!(sandbox.attached_programs()?, LAYOUT2.programs.len());
    assert_eq!(sandbox.probe_tcp("10.96.0.10:80", 5)?.replies.get("b1"), Some(&5));
    Ok(())
}
