//! The programs of the BPF object: loaded (verified by the kernel), attached to a cgroup, and
//! their links pinned. Install attaches every hook; an upgrade the hooks a newer build adds.
use std::{fs, path::Path};

use aya::programs::{links::FdLink, CgroupAttachMode, CgroupSockAddr};

use super::{
    error::{DataplaneError, Result},
    pins::link_pin,
    sizes, MAPS, OBJECT,
};

/// The BPF object with every map taken from its pin under `pin_path` (aya reuses a pin it
/// finds, and creates and pins a map whose pin is missing, at the installed capacity): no
/// program is loaded yet.
pub(super) fn load_against_pins(pin_path: &Path) -> Result<aya::Ebpf> {
    let mut loader = sizes::sized_loader(&sizes::installed(pin_path)?);
    let pins: Vec<std::path::PathBuf> = MAPS.iter().map(|name| pin_path.join(name)).collect();
    for (name, pin) in MAPS.iter().zip(&pins) {
        loader.map_pin_path(name, pin.as_path());
    }
    loader.load(OBJECT).map_err(DataplaneError::Load)
}

/// Program `name` of `ebpf`, loaded into the kernel (verified) unless it already is.
pub(super) fn loaded_program<'a>(
    ebpf: &'a mut aya::Ebpf,
    name: &'static str,
) -> Result<&'a mut CgroupSockAddr> {
    let program: &mut CgroupSockAddr = ebpf
        .program_mut(name)
        .ok_or(DataplaneError::MissingProgram { name })?
        .try_into()
        .map_err(|error| DataplaneError::Program { program: name, error })?;
    if program.fd().is_err() {
        program.load().map_err(|error| DataplaneError::Program { program: name, error })?;
    }
    Ok(program)
}

/// Loads program `name` of `ebpf`, attaches it to the cgroup `cgroup_dir` and pins its link.
pub(super) fn attach_and_pin(
    ebpf: &mut aya::Ebpf,
    name: &'static str,
    cgroup_dir: &fs::File,
    pin_path: &Path,
) -> Result<()> {
    let program = loaded_program(ebpf, name)?;
    // aya attaches through a BPF link, which the kernel always attaches as one of many
    // (other tools' programs keep running) and which takes no mode flags: anything but the
    // default (0) is EINVAL.
    let link_id = program
        .attach(cgroup_dir, CgroupAttachMode::default())
        .map_err(|error| DataplaneError::Program { program: name, error })?;
    let link = program
        .take_link(link_id)
        .map_err(|error| DataplaneError::Program { program: name, error })?;
    let link: FdLink =
        link.try_into().map_err(|error| DataplaneError::NotALink { program: name, error })?;
    link.pin(link_pin(pin_path, name))
        .map_err(|error| DataplaneError::Pin { what: format!("pinning link of {name}"), error })?;
    Ok(())
}
