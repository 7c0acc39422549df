//! Pins this data plane did not make are never used: a link pin of another data plane in the
//! pin directory is not updated by an upgrade (its programs stay), a map of another pinned
//! under one of our names is neither reused by an upgrade nor replaced by an install. Real
//! data planes in sandboxes of their own; the foreign pins made by `bpftool`.
use std::path::Path;

use anyhow::{Context as _, Result};
use aya::{
    maps::MapData,
    programs::links::{FdLink, PinnedLink},
};
use reconciler::dataplane::{self, Dataplane};
use reconciler_tests::{bpftool, one_service, Remove, Sandbox};

fn path(path: &Path) -> Result<&str> {
    path.to_str().context("a pin path that is not UTF-8")
}

fn map_id(pin: &Path) -> Result<u32> {
    Ok(MapData::from_pin(pin)?.info()?.id())
}

/// The ID of the program the link pinned at `pin` runs.
fn linked_program(pin: &Path) -> Result<u32> {
    Ok(FdLink::from(PinnedLink::from_pin(pin)?).info()?.program_id())
}

/// An upgrade of a data plane whose directory holds another data plane's link (or a map of
/// another under one of its names) refuses, naming the pin, and changes neither.
#[test]
fn an_upgrade_never_updates_another_data_planes_link_or_reuses_its_map() -> Result<()> {
    let ours = Sandbox::new("pins-ours")?;
    let theirs = Sandbox::new("pins-theirs")?;
    ours.install(&one_service("10.96.0.10:80", &["127.0.0.1:8080"])?)?;
    theirs.install(&one_service("10.96.0.20:80", &["127.0.0.1:8081"])?)?;
    let (pin, other) = (ours.pin_path(), theirs.pin_path());
    // A hook whose link is gone: the next upgrade attaches it, and first checks the pins.
    std::fs::remove_file(pin.join("link_recvmsg4"))?;

    // Their SERVICES pinned under our name, ours set aside (the programs keep it alive).
    let services = pin.join("SERVICES");
    let own_services = map_id(&services)?;
    std::fs::remove_file(&services)?;
    bpftool(&[
        "map",
        "pin",
        "id",
        &map_id(&other.join("SERVICES"))?.to_string(),
        path(&services)?,
    ])?;
    let err = dataplane::upgrade(pin).err().context("upgraded with a foreign SERVICES")?;
    let expected = format!("{} is not part of a reconciler data plane", services.display());
    assert!(err.to_string().contains(&expected), "{err}");
    assert!(err.to_string().contains("as SERVICES"), "{err}");
    std::fs::remove_file(&services)?;
    bpftool(&["map", "pin", "id", &own_services.to_string(), path(&services)?])?;

    // Their connect4 link pinned under our name (our own link goes with its pin).
    let link = pin.join("link_connect4");
    let their_program = linked_program(&other.join("link_connect4"))?;
    std::fs::remove_file(&link)?;
    let _foreign = Remove(link.clone());
    bpftool(&["link", "pin", "pinned", path(&other.join("link_connect4"))?, path(&link)?])?;
    let err = dataplane::upgrade(pin).err().context("upgraded with a foreign link")?;
    let expected = format!("{} is not part of a reconciler data plane", link.display());
    assert!(err.to_string().contains(&expected), "{err}");
    assert!(err.to_string().contains("of another data plane"), "{err}");
    // Their link still runs their program; their data plane is as it was.
    assert_eq!(linked_program(&other.join("link_connect4"))?, their_program);
    assert_eq!(theirs.attached_programs()?, reconciler_tests::DATA_PLANE_PROGRAMS);
    Ok(())
}

/// A first install into a directory where a map of another data plane is pinned under one of
/// our names (or a map of another name) refuses, naming the pin, and leaves it.
#[test]
fn an_install_never_replaces_a_map_pinned_under_one_of_our_names() -> Result<()> {
    let fresh = Sandbox::new("pins-fresh")?;
    let theirs = Sandbox::new("pins-live")?;
    theirs.install(&one_service("10.96.0.20:80", &["127.0.0.1:8081"])?)?;
    let pin = fresh.pin_path();
    std::fs::create_dir(pin)?;
    std::fs::set_permissions(pin, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let _dir = Remove(pin.to_owned());

    let services = pin.join("SERVICES");
    let _services = Remove(services.clone());
    let their_services = map_id(&theirs.pin_path().join("SERVICES"))?;
    bpftool(&["map", "pin", "id", &their_services.to_string(), path(&services)?])?;
    let err = Dataplane::install(pin, fresh.cgroup()).err().context("installed over their map")?;
    let expected = format!("{} is not part of a reconciler data plane", services.display());
    assert!(err.to_string().contains(&expected), "{err}");
    assert!(err.to_string().contains("no link here attaches"), "{err}");
    assert_eq!(map_id(&services)?, their_services, "their map was replaced");
    assert_eq!(fresh.attached_programs()?, 0);

    // A map of another name under one of ours.
    std::fs::remove_file(&services)?;
    let backends = pin.join("BACKENDS");
    let _backends = Remove(backends.clone());
    bpftool(
        &[
            &["map", "create", path(&backends)?][..],
            &["type", "hash", "key", "4", "value", "4", "entries", "1", "name", "not_ours"],
        ]
        .concat(),
    )?;
    let err = Dataplane::install(pin, fresh.cgroup()).err().context("installed over a map")?;
    assert!(err.to_string().contains("a map named \"not_ours\""), "{err}");
    assert!(backends.exists());
    Ok(())
}
