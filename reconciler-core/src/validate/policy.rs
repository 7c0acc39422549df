//! What the semantic rules may additionally require, beyond the definitions themselves.
use ipnet::IpNet;

use crate::{capacity::Capacity, node::LocalAddress};

/// What the semantic rules may additionally require.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// When set, every VIP must lie in one of these ranges.
    pub allowed_vips: Option<Vec<IpNet>>,
    /// This node's own addresses, which no VIP may take (a VIP is rewritten for every process
    /// in the cgroup, so it would hijack connects to the node itself). Empty where validation
    /// does not run on the node, as in CI.
    pub local_addresses: Vec<LocalAddress>,
    /// The node's capacity, which the repository must fit, failovers included; `None`
    /// where it is not known (CI): the most any node can have.
    pub capacity: Option<Capacity>,
    /// Loopback and node addresses that health checks may nevertheless probe
    /// (`policy.allowLocalHealthChecks`); by default a check never probes the node itself.
    pub allow_local_health_checks: Vec<IpNet>,
}
