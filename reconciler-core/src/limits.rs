//! What reconciler reads from outside, bounded: every limit here is checked before the memory
//! or time it guards is spent, so a hostile or careless commit is refused with an error
//! instead of exhausting the node. docs/definitions.md lists them ("Limits").

/// Bytes of one definition file (and of the daemon's configuration file).
pub const MAX_FILE_BYTES: usize = 8 << 20;
/// Bytes of all definition files of one revision together.
pub const MAX_SOURCE_BYTES: u64 = 64 << 20;
/// Definition files (`.yaml`/`.yml`) in one revision.
pub const MAX_FILES: usize = 100_000;
/// Nesting of mappings and sequences in one YAML document; a service needs five levels.
pub const MAX_DEPTH: usize = 32;
/// YAML nodes (scalars, mappings, sequences) one service port may take, its backends apart:
/// every field of a service set, with a dozen labels (a unit test holds a definition to it).
pub const NODES_PER_SERVICE: usize = 128;
/// YAML nodes one backend may take: `{address, port, weight, state}`, with room to spare.
pub const NODES_PER_BACKEND: usize = 16;
/// YAML nodes in all definition files of one revision: what bounds the memory a revision
/// takes once parsed. Derived from the data plane's largest capacity (65 536 services,
/// 262 144 backends), so that no repository within it is refused for its size: 12.6 million.
pub const MAX_NODES: usize = NODES_PER_SERVICE * reconciler_common::MAX_SERVICES as usize
    + NODES_PER_BACKEND * reconciler_common::MAX_BACKENDS as usize;
/// Diagnostics reported for one run; the rest are counted, not listed.
pub const MAX_DIAGNOSTICS: usize = 1_000;
/// Bytes of a saved plan file (its desired state holds every map entry).
pub const MAX_PLAN_BYTES: u64 = 256 << 20;
/// Bytes of a commit or tag object that is read (to resolve a ref, to check a signature, to
/// find the tree): its size is read from the object's header, and a larger one is refused
/// unread, as the revision's failure (a commit's message and headers are rarely over a few
/// KiB; one of hundreds of MB would be read whole at every fetch).
pub const MAX_SIGNED_OBJECT_BYTES: usize = 1 << 20;
/// Bytes of one signature block (armored OpenPGP or SSH): real ones are a few KiB; a larger
/// one is refused before it is parsed.
pub const MAX_SIGNATURE_BYTES: usize = 64 << 10;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The nodes `text` takes when parsed.
    fn nodes(text: &str) -> usize {
        let mut budget = MAX_NODES;
        crate::load::parse_within(text, &mut budget).unwrap();
        MAX_NODES - budget
    }

    const EVERY_FIELD: &str = "apiVersion: reconciler.dev/v1alpha1
kind: Service
metadata:
  name: web
  labels: {a: '1', b: '2', c: '3', d: '4', e: '5', f: '6', g: '7', h: '8', i: '9', j: '10', k: '11', l: '12'}
spec:
  vip: 10.96.0.10
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
  loadBalancing: {algorithm: maglev, client: cgroup, tableSize: 1021}
  sessionAffinity: {timeoutSeconds: 300, client: cgroup}
  healthCheck: {protocol: http, port: 8081, path: /healthz, expectStatus: 200, intervalSeconds: 5, timeoutMillis: 1000, unhealthyThreshold: 3, healthyThreshold: 1}
  fallback: web-dr
  backends:
";

    #[test]
    fn a_service_with_every_field_and_a_backend_fit_their_allowance() {
        assert!(nodes(EVERY_FIELD) <= NODES_PER_SERVICE, "{}", nodes(EVERY_FIELD));
        let backend = "- {address: 10.1.0.1, port: 8080, weight: 3, state: draining}\n";
        let one = nodes(&format!("{EVERY_FIELD}  {backend}")) - nodes(EVERY_FIELD);
        assert!(one <= NODES_PER_BACKEND, "{one}");
    }

    #[test]
    fn every_service_of_the_capacity_with_four_backends_fits_the_node_limit() {
        let four: String = (1..=4).map(|i| format!("  - {{address: 10.1.0.{i}}}\n")).collect();
        let service = format!("{EVERY_FIELD}{four}");
        let all = nodes(&service) * (reconciler_common::MAX_SERVICES as usize - 1);
        assert!(all <= MAX_NODES, "{all} nodes for 65 535 services of four backends");
    }
}
