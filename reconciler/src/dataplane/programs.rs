//! The programs of the BPF object: loaded (verified by the kernel), attached to a cgroup, and
//! their links pinned. Install attaches every hook; an upgrade the hooks a newer build adds.
//! The hooks are of two kinds, `cgroup/*` socket-address programs and the `flows` sock_ops
//! program; both attach to the cgroup through a BPF link.
use std::{
    fs,
    os::fd::{AsFd as _, BorrowedFd},
    path::Path,
};

use aya::programs::{
    links::FdLink, CgroupAttachMode, CgroupSockAddr, Program, ProgramError, SockOps,
};

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

/// A hook of the object, of either kind.
enum Hook<'a> {
    SockAddr(&'a mut CgroupSockAddr),
    SockOps(&'a mut SockOps),
}

impl Hook<'_> {
    /// Hook `name` of `ebpf`, loaded into the kernel (verified) unless it already is.
    fn loaded<'a>(ebpf: &'a mut aya::Ebpf, name: &'static str) -> Result<Hook<'a>> {
        let error = |error| DataplaneError::Program { program: name, error };
        let mut hook =
            match ebpf.program_mut(name).ok_or(DataplaneError::MissingProgram { name })? {
                Program::CgroupSockAddr(program) => Hook::SockAddr(program),
                Program::SockOps(program) => Hook::SockOps(program),
                _ => return Err(error(ProgramError::UnexpectedProgramType)),
            };
        if hook.fd().is_err() {
            match &mut hook {
                Hook::SockAddr(program) => program.load(),
                Hook::SockOps(program) => program.load(),
            }
            .map_err(error)?;
        }
        Ok(hook)
    }

    fn fd(&self) -> std::result::Result<BorrowedFd<'_>, ProgramError> {
        match self {
            Hook::SockAddr(program) => program.fd().map(|fd| fd.as_fd()),
            Hook::SockOps(program) => program.fd().map(|fd| fd.as_fd()),
        }
    }

    /// Attaches the hook to the cgroup `cgroup_dir` through a BPF link, which the kernel
    /// always attaches as one of many (other tools' programs keep running) and which takes
    /// no mode flags: anything but the default (0) is EINVAL.
    fn attach(&mut self, name: &'static str, cgroup_dir: &fs::File) -> Result<FdLink> {
        let error = |error| DataplaneError::Program { program: name, error };
        let not_a_link = |error| DataplaneError::NotALink { program: name, error };
        let mode = CgroupAttachMode::default();
        match self {
            Hook::SockAddr(program) => {
                let id = program.attach(cgroup_dir, mode).map_err(error)?;
                program.take_link(id).map_err(error)?.try_into().map_err(not_a_link)
            }
            Hook::SockOps(program) => {
                let id = program.attach(cgroup_dir, mode).map_err(error)?;
                program.take_link(id).map_err(error)?.try_into().map_err(not_a_link)
            }
        }
    }
}

/// Loads hook `name` of `ebpf` into the kernel (verifies it) unless it already is.
pub(super) fn load_program(ebpf: &mut aya::Ebpf, name: &'static str) -> Result<()> {
    Hook::loaded(ebpf, name).map(drop)
}

/// `work` on the file descriptor of hook `name` of `ebpf`, loaded.
pub(super) fn with_loaded_program<T>(
    ebpf: &mut aya::Ebpf,
    name: &'static str,
    work: impl FnOnce(BorrowedFd<'_>) -> T,
) -> Result<T> {
    let hook = Hook::loaded(ebpf, name)?;
    let fd = hook.fd().map_err(|error| DataplaneError::Program { program: name, error })?;
    Ok(work(fd))
}

/// Loads hook `name` of `ebpf`, attaches it to the cgroup `cgroup_dir` and pins its link.
pub(super) fn attach_and_pin(
    ebpf: &mut aya::Ebpf,
    name: &'static str,
    cgroup_dir: &fs::File,
    pin_path: &Path,
) -> Result<()> {
    let link = Hook::loaded(ebpf, name)?.attach(name, cgroup_dir)?;
    link.pin(link_pin(pin_path, name))
        .map_err(|error| DataplaneError::Pin { what: format!("pinning link of {name}"), error })?;
    Ok(())
}
