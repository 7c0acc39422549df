//! The baselines: the rule sets kube-proxy would write for the same services, in its iptables
//! mode (`KUBE-SERVICES` -> per-service `KUBE-SVC-*` chains of `statistic` rules -> per-endpoint
//! `KUBE-SEP-*` DNAT chains, in `nat OUTPUT`) and its nftables mode (one verdict map keyed by
//! address, protocol and port -> per-service chains -> per-endpoint DNAT chains).
use std::fmt::Write as _;

pub use reconciler_core::state::Protocol;

/// A service as the baselines see it: one VIP:port/protocol and its endpoints.
#[derive(Clone, Debug)]
pub struct Service {
    pub vip: String,
    pub port: u16,
    pub protocol: Protocol,
    pub endpoints: Vec<String>,
}

impl Service {
    /// The protocol as iptables and nft spell it: `tcp` or `udp`.
    fn proto(&self) -> &'static str {
        match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// kube-proxy names chains by a hash; an index is as unique and keeps the text readable.
fn svc_chain(index: usize) -> String {
    format!("KUBE-SVC-{index:016X}")
}

fn sep_chain(index: usize, endpoint: usize, generation: usize) -> String {
    format!("KUBE-SEP-{index:010X}{endpoint:02X}{generation:04X}")
}

/// An `iptables-restore` input for every service (a full sync).
pub fn iptables_full(services: &[Service]) -> String {
    let mut out = String::from("*nat\n:KUBE-SERVICES - [0:0]\n");
    for (i, service) in services.iter().enumerate() {
        let _ = writeln!(out, ":{} - [0:0]", svc_chain(i));
        for e in 0..service.endpoints.len() {
            let _ = writeln!(out, ":{} - [0:0]", sep_chain(i, e, 0));
        }
    }
    out.push_str(
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    for (i, service) in services.iter().enumerate() {
        let _ = writeln!(
            out,
            "-A KUBE-SERVICES -d {}/32 -p {proto} -m comment --comment \"default/svc-{i}:http cluster IP\" \
             -m {proto} --dport {} -j {}",
            service.vip,
            service.port,
            svc_chain(i),
            proto = service.proto(),
        );
    }
    for (i, service) in services.iter().enumerate() {
        service_rules(&mut out, i, service, 0);
    }
    out.push_str("COMMIT\n");
    out
}

/// The SVC chain's `statistic` rules and the SEP chains' DNAT rules of service `i`.
fn service_rules(out: &mut String, i: usize, service: &Service, generation: usize) {
    let n = service.endpoints.len();
    for (e, endpoint) in service.endpoints.iter().enumerate() {
        let target = sep_chain(i, e, generation);
        if e + 1 < n {
            let probability = 1.0 / (n - e) as f64;
            let _ = writeln!(
                out,
                "-A {} -m statistic --mode random --probability {probability:.11} -j {target}",
                svc_chain(i)
            );
        } else {
            let _ = writeln!(out, "-A {} -j {target}", svc_chain(i));
        }
        let proto = service.proto();
        let _ =
            writeln!(out, "-A {target} -p {proto} -m {proto} -j DNAT --to-destination {endpoint}");
    }
}

/// What kube-proxy restores (`--noflush`) when one endpoint of service `i` changes: the
/// service chain rewritten (declaring it flushes it) and new endpoint chains. The old
/// endpoint chains are left for a later sync: iptables-nft refuses to delete them in the same
/// transaction that drops the last reference to them.
pub fn iptables_one_service(i: usize, after: &Service) -> String {
    let mut out = String::from("*nat\n");
    let _ = writeln!(out, ":{} - [0:0]", svc_chain(i));
    for e in 0..after.endpoints.len() {
        let _ = writeln!(out, ":{} - [0:0]", sep_chain(i, e, 1));
    }
    service_rules(&mut out, i, after, 1);
    out.push_str("COMMIT\n");
    out
}

/// An `nft -f` input for every service (a full sync), in table `ip kube-proxy`.
pub fn nft_full(services: &[Service]) -> String {
    let mut out = String::from("table ip kube-proxy {\n");
    out.push_str("  map service-ips {\n    type ipv4_addr . inet_proto . inet_service : verdict\n");
    if !services.is_empty() {
        out.push_str("    elements = {\n");
        for (i, service) in services.iter().enumerate() {
            let (vip, proto, port) = (&service.vip, service.proto(), service.port);
            let _ = writeln!(out, "      {vip} . {proto} . {port} : goto service-{i},");
        }
        out.push_str("    }\n");
    }
    out.push_str("  }\n");
    out.push_str("  chain nat-output {\n    type nat hook output priority -100; policy accept;\n    jump services\n  }\n");
    out.push_str(
        "  chain services {\n    ip daddr . meta l4proto . th dport vmap @service-ips\n  }\n",
    );
    for (i, service) in services.iter().enumerate() {
        nft_service(&mut out, i, service, 0);
    }
    out.push_str("}\n");
    out
}

fn nft_service(out: &mut String, i: usize, service: &Service, generation: usize) {
    let n = service.endpoints.len();
    let _ = write!(out, "  chain service-{i} {{\n    numgen random mod {n} vmap {{ ");
    for e in 0..n {
        let _ = write!(out, "{e} : goto endpoint-{i}-{e}-{generation}, ");
    }
    out.push_str("}\n  }\n");
    for (e, endpoint) in service.endpoints.iter().enumerate() {
        nft_endpoint(out, i, e, generation, service.proto(), endpoint);
    }
}

fn nft_endpoint(out: &mut String, i: usize, e: usize, generation: usize, proto: &str, to: &str) {
    let _ = writeln!(
        out,
        "  chain endpoint-{i}-{e}-{generation} {{\n    meta l4proto {proto} dnat to {to}\n  }}"
    );
}

/// What kube-proxy's nftables mode sends when one endpoint of service `i` changes.
pub fn nft_one_service(i: usize, before: &Service, after: &Service) -> String {
    let mut out = String::from("table ip kube-proxy {\n");
    for (e, endpoint) in after.endpoints.iter().enumerate() {
        nft_endpoint(&mut out, i, e, 1, after.proto(), endpoint);
    }
    out.push_str("}\n");
    let _ = writeln!(out, "flush chain ip kube-proxy service-{i}");
    let n = after.endpoints.len();
    let _ = write!(out, "add rule ip kube-proxy service-{i} numgen random mod {n} vmap {{ ");
    for e in 0..n {
        let _ = write!(out, "{e} : goto endpoint-{i}-{e}-1, ");
    }
    out.push_str("}\n");
    for e in 0..before.endpoints.len() {
        let _ = writeln!(out, "delete chain ip kube-proxy endpoint-{i}-{e}-0");
    }
    out
}
