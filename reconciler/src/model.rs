//! Service definitions as people write them: `apiVersion: reconciler.dev/v1alpha1`,
//! `kind: Service`, several YAML documents per file.
use std::{collections::BTreeMap, net::IpAddr, path::Path};

use serde::Deserialize;

use crate::dataplane::Protocol;

pub const API_VERSION: &str = "reconciler.dev/v1alpha1";

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Service {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: ServiceSpec,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpec {
    pub vip: IpAddr,
    pub ports: Vec<Port>,
    #[serde(default)]
    pub backends: Vec<Backend>,
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    #[serde(default)]
    pub session_affinity: Option<SessionAffinity>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Port {
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
    #[serde(default = "tcp")]
    pub protocol: ProtocolName,
    /// Defaults to `port`.
    #[serde(default)]
    pub target_port: Option<u16>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum ProtocolName {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

fn tcp() -> ProtocolName {
    ProtocolName::Tcp
}

impl From<ProtocolName> for Protocol {
    fn from(name: ProtocolName) -> Self {
        match name {
            ProtocolName::Tcp => Protocol::Tcp,
            ProtocolName::Udp => Protocol::Udp,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub address: IpAddr,
    /// Overrides every port's `targetPort` for this backend.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default)]
    pub state: BackendState,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum BackendState {
    /// Receives new connections.
    #[default]
    Active,
    /// Keeps its existing connections but receives no new ones.
    Draining,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancing {
    #[serde(default)]
    pub algorithm: AlgorithmName,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum AlgorithmName {
    #[default]
    Random,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SessionAffinity {
    pub timeout_seconds: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {message}")]
    Parse { file: String, line: usize, column: usize, message: String },
}

/// Every service document in one YAML file; empty documents are skipped.
pub fn parse_file(text: &str, file: &str) -> Result<Vec<Service>, ModelError> {
    let mut services = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        // Deserialising straight from the document (not via a Value) keeps error locations.
        if let Some(service) =
            Option::<Service>::deserialize(document).map_err(|e| parse_error(file, &e))?
        {
            services.push(service);
        }
    }
    Ok(services)
}

fn parse_error(file: &str, error: &serde_yaml::Error) -> ModelError {
    let (line, column) = error.location().map_or((1, 1), |l| (l.line(), l.column()));
    let mut message = error.to_string();
    // serde_yaml appends the location we already print in front.
    if let Some(cut) = message.rfind(" at line ") {
        message.truncate(cut);
    }
    ModelError::Parse { file: file.to_owned(), line, column, message }
}

/// Reads and parses one file.
pub fn load_file(path: &Path) -> Result<Vec<Service>, ModelError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|source| ModelError::Read { file: file.clone(), source })?;
    parse_file(&text, &file)
}

/// Every service in the `.yaml`/`.yml` files under `dir`, files in path order.
pub fn load_dir(dir: &Path) -> Result<Vec<Service>, ModelError> {
    let mut files = Vec::new();
    collect_yaml_files(dir, &mut files)?;
    files.sort();
    let mut services = Vec::new();
    for file in files {
        services.extend(load_file(&file)?);
    }
    Ok(services)
}

fn collect_yaml_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<(), ModelError> {
    let read_error = |source| ModelError::Read { file: dir.display().to_string(), source };
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        if path.is_dir() {
            collect_yaml_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = r#"
apiVersion: reconciler.dev/v1alpha1
kind: Service
metadata:
  name: web
  labels: {team: web}
spec:
  vip: 10.96.0.10
  ports:
    - {name: http, port: 80, protocol: TCP, targetPort: 8080}
  backends:
    - {address: 10.1.0.11}
    - {address: 10.1.0.12, port: 9090, weight: 3, state: draining}
  loadBalancing: {algorithm: random}
  sessionAffinity: {timeoutSeconds: 300}
---
"#;

    #[test]
    fn parses_the_documented_example_with_defaults() {
        let services = parse_file(WEB, "web.yaml").unwrap();
        assert_eq!(services.len(), 1);
        let spec = &services[0].spec;
        assert_eq!(spec.ports[0].target_port, Some(8080));
        assert_eq!(spec.backends[0].weight, 1);
        assert_eq!(spec.backends[0].state, BackendState::Active);
        assert_eq!(spec.backends[1].state, BackendState::Draining);
        assert_eq!(spec.session_affinity, Some(SessionAffinity { timeout_seconds: 300 }));
    }

    #[test]
    fn unknown_fields_are_errors_with_a_location() {
        let text =
            WEB.replace("    - {address: 10.1.0.11}", "    - {address: 10.1.0.11, wieght: 2}");
        let err = parse_file(&text, "web.yaml").unwrap_err().to_string();
        assert!(
            err.starts_with("web.yaml:12:28: spec.backends[0]: unknown field `wieght`"),
            "{err}"
        );
        assert!(!err.contains("at line"), "{err}");
    }
}
