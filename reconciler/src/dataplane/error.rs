//! What can go wrong in the data plane, one variant per cause, each with the message a user
//! reads.
use std::{io, path::PathBuf};

use aya::{
    maps::MapError,
    pin::PinError,
    programs::{links::LinkError, ProgramError},
};
use reconciler_common::REVISION_LEN;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "{path} is not on a bpf filesystem; mount one with \
         `mount -t bpf -o mode=0700 bpf /sys/fs/bpf`"
    )]
    NotBpffs { path: PathBuf },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error(
        "the pin directory {path} is owned by uid {owner}, not by this process's uid {euid}; \
         its owner could replace the pinned maps, so it is refused"
    )]
    PinDirOwner { path: PathBuf, owner: u32, euid: u32 },
    #[error(
        "the pin directory {path} has mode {mode:04o}: group or others could replace the \
         pinned maps, so it is refused; `chmod 700` it"
    )]
    PinDirMode { path: PathBuf, mode: u32 },
    #[error(
        "{ancestor}, above the pin directory {path}, has mode {mode:04o}: group or others \
         could move the pin directory away, so it is refused; remove their write access or \
         set the sticky bit"
    )]
    AncestorMode { path: PathBuf, ancestor: PathBuf, mode: u32 },
    #[error(
        "{ancestor}, above the pin directory {path}, is owned by uid {owner}, who could move \
         the pin directory away, so it is refused"
    )]
    AncestorOwner { path: PathBuf, ancestor: PathBuf, owner: u32 },
    #[error(
        "refusing to uninstall {path}: it is not on a bpf filesystem, so it holds no data plane"
    )]
    UninstallNotBpffs { path: PathBuf },
    #[error("refusing to uninstall {path}: it holds no reconciler data plane")]
    NoDataplane { path: PathBuf },
    #[error(
        "refusing to uninstall {path}: {pin} is not part of a reconciler data plane ({reason})"
    )]
    ForeignPin { path: PathBuf, pin: PathBuf, reason: String },
    #[error("{path} is not a cgroup v2 directory")]
    NotCgroup2 { path: PathBuf },
    #[error("no cgroup2 filesystem is mounted (looked in /proc/self/mounts)")]
    NoCgroup2Mount,
    #[error("no data plane is installed at {path}")]
    NotInstalled { path: PathBuf },
    #[error(
        "the data plane at {path} is attached to another cgroup (id {installed}, asked for \
         id {requested}); uninstall it first"
    )]
    OtherCgroup { path: PathBuf, installed: u64, requested: u64 },
    #[error(
        "cgroup {cgroup} already has a reconciler data plane attached (programs \
         {programs:?}){}; one installed at {path} too would run after it and lose, so it is \
         refused; uninstall the other first",
        pinned_at(.other)
    )]
    CgroupTaken { cgroup: PathBuf, path: PathBuf, programs: Vec<u32>, other: Option<PathBuf> },
    #[error(
        "the data plane at {path} has layout version {found}, this build uses {expected}; {}",
        if found < expected {
            "`reconciler apply` (or the daemon, at start) upgrades it in place"
        } else {
            "it was made by a newer reconciler: use that one"
        }
    )]
    LayoutMismatch { path: PathBuf, found: u32, expected: u32 },
    // Causes are part of each message, never `#[source]`s as well: `{:#}` would print them
    // twice, and the daemon logs the message alone.
    #[error("{what}: {error}")]
    Io { what: String, error: io::Error },
    #[error("{what}: {error}")]
    Map { what: String, error: MapError },
    #[error("loading the BPF programs: {0}")]
    Load(aya::EbpfError),
    #[error(
        "reading the kernel's BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF), which the \
         socket iterator that finds connected UDP sockets needs: {0}"
    )]
    Btf(aya::BtfError),
    #[error("program {program}: {error}")]
    Program { program: &'static str, error: ProgramError },
    #[error("listing the loaded BPF programs: {0}")]
    ProgramList(ProgramError),
    #[error("reading the maps of BPF program {id}: {error}")]
    ProgramMaps { id: u32, error: ProgramError },
    #[error("the live generation is {found}, not the expected {expected}")]
    GenerationMoved { expected: u64, found: u64 },
    #[error(
        "the maps do not hold what the incremental plan recorded for the services it touches \
         (changed by hand, or an apply was interrupted)"
    )]
    NotAsRecorded,
    #[error("an apply confined to recorded entries needs the generation they were recorded at")]
    RecordedWithoutGeneration,
    #[error("{count} cgroups to exclude from translation; the data plane holds at most {max}")]
    TooManyExcluded { count: usize, max: u32 },
    #[error("the kernel does not say how much memory map {map} locks (no memlock in fdinfo)")]
    NoMemlock { map: &'static str },
    #[error("waiting for an RCU grace period ({what}): {error}")]
    GracePeriod { what: &'static str, error: io::Error },
    #[error("{path} contains a NUL byte")]
    NulInPath { path: PathBuf },
    #[error("the BPF object has no program {name}")]
    MissingProgram { name: &'static str },
    #[error("the BPF object has no map {name}")]
    MissingMap { name: &'static str },
    #[error("parsing the BPF object: {0}")]
    ParseObject(aya_obj::ParseError),
    #[error("link of {program} is not a BPF link: {error}")]
    NotALink { program: &'static str, error: LinkError },
    #[error("{what}: {error}")]
    Pin { what: String, error: PinError },
    #[error("revision is longer than {} bytes", REVISION_LEN)]
    RevisionTooLong,
    #[error("{path} has links but no readable METADATA")]
    NoMetadata { path: PathBuf },
    #[error(
        "pinned map {name} ({pinned}) differs from this build's ({wanted}), and no \
         migration exists for it"
    )]
    MapShapeChanged { name: &'static str, pinned: String, wanted: String },
    #[error("no cgroup with ID {id} (the data plane's) exists")]
    NoCgroupWithId { id: u64 },
    #[error(
        "another `reconciler trace` (PID {pid}) is tracing this data plane; one tracer at a \
         time reads its events"
    )]
    TracerRunning { pid: u32 },
}

pub(super) type Result<T, E = DataplaneError> = std::result::Result<T, E>;

fn pinned_at(other: &Option<PathBuf>) -> String {
    other.as_ref().map(|dir| format!(", pinned at {}", dir.display())).unwrap_or_default()
}

/// For `map_err`: an I/O error, with what failed.
pub(super) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DataplaneError {
    let what = what.into();
    move |error| DataplaneError::Io { what, error }
}

/// For `map_err`: a map error, with what failed.
pub(super) fn map_err(what: impl Into<String>) -> impl FnOnce(MapError) -> DataplaneError {
    let what = what.into();
    move |error| DataplaneError::Map { what, error }
}

#[cfg(test)]
mod tests {
    use aya::{pin::PinError, programs::links::LinkError};
    use reconciler_common::REVISION_LEN;

    use super::DataplaneError::*;

    /// These replaced `Invalid(String)`, whose messages users and scripts have seen: each
    /// keeps the text it had.
    #[test]
    fn the_named_errors_keep_the_texts_of_invalid() {
        let texts = [
            (NulInPath { path: "/a\0b".into() }.to_string(), "/a\0b contains a NUL byte".into()),
            (
                MissingProgram { name: "connect4" }.to_string(),
                "the BPF object has no program connect4".into(),
            ),
            (MissingMap { name: "SLOTS" }.to_string(), "the BPF object has no map SLOTS".into()),
            (
                NotALink { program: "connect4", error: LinkError::InvalidLink }.to_string(),
                format!("link of connect4 is not a BPF link: {}", LinkError::InvalidLink),
            ),
            (
                Pin {
                    what: "pinning map SLOTS".into(),
                    error: PinError::NoFd { name: "SLOTS".into() },
                }
                .to_string(),
                format!("pinning map SLOTS: {}", PinError::NoFd { name: "SLOTS".into() }),
            ),
            (RevisionTooLong.to_string(), format!("revision is longer than {REVISION_LEN} bytes")),
            (
                NoMetadata { path: "/sys/fs/bpf/x".into() }.to_string(),
                "/sys/fs/bpf/x has links but no readable METADATA".into(),
            ),
            (
                MapShapeChanged { name: "SLOTS", pinned: "p".into(), wanted: "w".into() }
                    .to_string(),
                "pinned map SLOTS (p) differs from this build's (w), and no migration exists \
                 for it"
                    .into(),
            ),
            (
                NoCgroupWithId { id: 7 }.to_string(),
                "no cgroup with ID 7 (the data plane's) exists".into(),
            ),
            (
                TracerRunning { pid: 42 }.to_string(),
                "another `reconciler trace` (PID 42) is tracing this data plane; one tracer at \
                 a time reads its events"
                    .into(),
            ),
        ];
        for (text, expected) in texts {
            assert_eq!(text, expected);
        }
    }
}
