//! What reconciler reads from outside, bounded: every limit here is checked before the memory
//! or time it guards is spent, so a hostile or careless commit is refused with an error
//! instead of exhausting the node. The README lists them (section "Limits").

/// Bytes of one definition file (and of the daemon's configuration file).
pub const MAX_FILE_BYTES: usize = 8 << 20;
/// Bytes of all definition files of one revision together.
pub const MAX_SOURCE_BYTES: u64 = 64 << 20;
/// Definition files (`.yaml`/`.yml`) in one revision.
pub const MAX_FILES: usize = 100_000;
/// Nesting of mappings and sequences in one YAML document; a service needs five levels.
pub const MAX_DEPTH: usize = 32;
/// YAML nodes (scalars, mappings, sequences) in all definition files of one revision: what
/// bounds the memory a revision takes once parsed. The data plane's capacity (65 536
/// frontends, 262 144 backends) fits in well under a million.
pub const MAX_NODES: usize = 2_000_000;
/// Diagnostics reported for one run; the rest are counted, not listed.
pub const MAX_DIAGNOSTICS: usize = 1_000;
/// Bytes of a saved plan file (its desired state holds every map entry).
pub const MAX_PLAN_BYTES: u64 = 256 << 20;
/// Bytes of a memo file of the incremental path (`memo`): a repository at the limits above
/// makes far less; a larger file is no memo of ours.
pub const MAX_MEMO_BYTES: u64 = 1 << 30;

/// The message for a file of `size` bytes over [`MAX_FILE_BYTES`].
pub fn too_large(size: u64) -> String {
    format!(
        "the file is {size} bytes; at most {MAX_FILE_BYTES} bytes ({}) per file",
        mib(MAX_FILE_BYTES as u64)
    )
}

/// `4 MiB`.
pub fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}

/// The text of the file at `path`, read only up to `max` bytes: a larger file is an
/// `InvalidData` error, whatever its size, without reading the rest.
pub fn read_to_string(path: &std::path::Path, max: u64) -> std::io::Result<String> {
    String::from_utf8(read(path, max)?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The bytes of the file at `path`, read only up to `max` bytes, as [`read_to_string`].
pub fn read(path: &std::path::Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        let message = format!("larger than {} ({max} bytes), the most this file may be", mib(max));
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, message));
    }
    Ok(bytes)
}
