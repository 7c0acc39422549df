//! Facts about the node reconciler runs on that the rules need: its own addresses.
use std::net::IpAddr;

/// An address of one of this node's interfaces (in the network namespace reconciler runs in).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalAddress {
    pub address: IpAddr,
    pub interface: String,
}

/// Every address of this node's interfaces except those in `allowed` (the node
/// configuration's `policy.allowLocalVIPs`), in the canonical form the rules compare.
pub fn local_addresses(allowed: &[IpAddr]) -> std::io::Result<Vec<LocalAddress>> {
    Ok(if_addrs::get_if_addrs()?
        .into_iter()
        .map(|i| LocalAddress { address: i.ip().to_canonical(), interface: i.name })
        .filter(|l| !allowed.iter().any(|a| a.to_canonical() == l.address))
        .collect())
}

/// This host's name (the kernel's), or `localhost` if it cannot be read: a node's name by
/// default.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
