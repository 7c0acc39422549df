//! Fail closed: a connect or datagram to a VIP that cannot be translated faithfully is
//! refused at once (`ECONNREFUSED`), counted by reason, and nothing leaves for the VIP: a
//! port or protocol no service defines, a slot or backend missing from the live set, a
//! translation the socket cannot record.
use std::process::Command;

use anyhow::{ensure, Context as _, Result};
use reconciler::dataplane::ApplyTo;
use reconciler_tests::{one_service, one_udp_service, Sandbox};

#[test]
fn a_known_vip_whose_slot_or_backend_is_missing_is_refused_not_sent_on() -> Result<()> {
    let mut sandbox = Sandbox::new("fail-closed")?;
    let backend = sandbox.serve_tcp("127.0.0.11:8080", "b1")?.to_string();
    let dataplane = sandbox.install(&one_service("10.96.0.10:80", &[&backend])?)?;
    let active = dataplane.status()?.active_set;
    let sent_before = sandbox.lo_tx_packets()?;

    // SLOTS key: service 1, slot 0, the active set.
    let mut slot = 1u32.to_le_bytes().to_vec();
    slot.extend(0u32.to_le_bytes());
    slot.extend([active, 0, 0, 0]);
    sandbox.delete_by_hand("SLOTS", &slot)?;
    let result = sandbox.probe_tcp("10.96.0.10:80", 4)?;
    assert_eq!(result.errors.get("ECONNREFUSED"), Some(&4), "{result:?}");
    assert_eq!(dataplane.events()?.slot_miss, 4);

    // With the slot back, the backend missing instead.
    sandbox.update_by_hand("SLOTS", &slot, &1u32.to_le_bytes())?;
    let mut key = 1u32.to_le_bytes().to_vec();
    key.extend([active, 0, 0, 0]);
    sandbox.delete_by_hand("BACKENDS", &key)?;
    let result = sandbox.probe_tcp("10.96.0.10:80", 3)?;
    assert_eq!(result.errors.get("ECONNREFUSED"), Some(&3), "{result:?}");
    assert_eq!(dataplane.events()?.backend_miss, 3);
    // Refused before any packet: nothing left for the VIP (or anywhere).
    assert_eq!(sandbox.lo_tx_packets()?, sent_before);
    // `reconciler status` shows the reasons.
    let output = Command::new(reconciler_tests::reconciler_path()?)
        .args(["status", "--output", "json", "--pin-path"])
        .arg(sandbox.pin_path())
        .output()?;
    let status: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(
        (&status["events"]["slot_miss"], &status["events"]["backend_miss"]),
        (&4.into(), &3.into()),
        "{status}"
    );
    Ok(())
}

/// Packets the sandbox sent to `daddr`, by the nftables counter `vip_leak_counters` set up.
fn packets_sent_to(sandbox: &Sandbox, daddr: &str) -> Result<u64> {
    let output =
        sandbox.command_in_netns("nft").args(["-j", "list", "table", "ip", "leak"]).output()?;
    ensure!(output.status.success(), "nft: {}", String::from_utf8_lossy(&output.stderr));
    let listing: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let rules = listing["nftables"].as_array().context("nft -j output")?;
    for rule in rules.iter().filter_map(|item| item.get("rule")) {
        let expr = rule["expr"].as_array().context("rule expressions")?;
        let matches = expr.iter().any(|e| e["match"]["right"] == daddr);
        if let Some(counter) = expr.iter().find_map(|e| e.get("counter")).filter(|_| matches) {
            return counter["packets"].as_u64().context("counter packets");
        }
    }
    anyhow::bail!("no counter for {daddr}")
}

/// A default route out of the sandbox through a veth, with an nftables counter per
/// destination on the way out: what would leave the node.
fn vip_leak_counters(sandbox: &Sandbox, daddrs: &[&str]) -> Result<()> {
    for argv in [
        &["ip", "link", "add", "out0", "type", "veth", "peer", "name", "out0p"][..],
        &["ip", "addr", "add", "192.0.2.1/24", "dev", "out0"],
        &["ip", "link", "set", "out0", "up"],
        &["ip", "link", "set", "out0p", "up"],
        // A neighbour entry, so the gateway needs no ARP before a packet can leave.
        &["ip", "neigh", "add", "192.0.2.2", "lladdr", "02:00:00:00:00:02", "dev", "out0"],
        &["ip", "route", "add", "default", "via", "192.0.2.2", "dev", "out0"],
        &["nft", "add", "table", "ip", "leak"],
        &["nft", "add", "chain", "ip", "leak", "out", "{ type filter hook output priority 0 ; }"],
    ] {
        sandbox.run(argv)?;
    }
    for daddr in daddrs {
        sandbox
            .run(&["nft", "add", "rule", "ip", "leak", "out", "ip", "daddr", daddr, "counter"])?;
    }
    Ok(())
}

#[test]
fn a_vip_is_closed_on_every_port_and_protocol_no_service_defines() -> Result<()> {
    let mut sandbox = Sandbox::new("unknown-port")?;
    let backend = sandbox.serve_tcp("127.0.0.11:8080", "b1")?.to_string();
    let dataplane = sandbox.install(&one_service("10.96.0.10:80", &[&backend])?)?;
    vip_leak_counters(&sandbox, &["10.96.0.10", "10.96.0.99"])?;
    // TCP to another port of the VIP, UDP to its TCP port and to another port: refused at
    // once. UDP to an address that is no VIP leaves, as it should (the counter's control).
    let script = "
import socket, errno
def outcome(call):
    try:
        call()
        return 'sent'
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
t.settimeout(3)
print('tcp 81', outcome(lambda: t.connect(('10.96.0.10', 81))))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
print('udp 80', outcome(lambda: u.sendto(b'q', ('10.96.0.10', 80))))
print('udp 81', outcome(lambda: u.sendto(b'q', ('10.96.0.10', 81))))
print('other', outcome(lambda: u.sendto(b'q', ('10.96.0.99', 80))))
";
    let lines = sandbox.python_lines(script, &[])?;
    assert_eq!(
        lines,
        ["tcp 81 ECONNREFUSED", "udp 80 ECONNREFUSED", "udp 81 ECONNREFUSED", "other sent"]
    );
    assert_eq!(packets_sent_to(&sandbox, "10.96.0.10")?, 0, "a packet left for the VIP");
    assert_eq!(packets_sent_to(&sandbox, "10.96.0.99")?, 1);
    assert_eq!(dataplane.events()?.unknown_port, 3);
    // The service's own port still works.
    assert_eq!(sandbox.probe_tcp("10.96.0.10:80", 3)?.replies.get("b1"), Some(&3));
    Ok(())
}

/// Sets the sandbox's `net.core.optmem_max`: the socket option memory each socket may use,
/// which socket storage is charged against (`bpf_sk_storage_charge`).
fn set_optmem_max(sandbox: &Sandbox, bytes: u32) -> Result<()> {
    sandbox.run(&["sysctl", "-q", "-w", &format!("net.core.optmem_max={bytes}")])?;
    Ok(())
}

/// Where the kernel cannot allocate a socket's record (here it refuses the charge: the
/// namespace's `net.core.optmem_max` is below the storage's size), a connect through a VIP
/// is refused and counted, not sent on untranslatable; a datagram keeps its translation in
/// `REVERSE` and its reply still comes from the VIP.
#[test]
fn a_translation_the_socket_cannot_record_is_refused_and_counted() -> Result<()> {
    let mut sandbox = Sandbox::new("no-record")?;
    let backend = sandbox.serve_tcp("127.0.0.11:8080", "b1")?.to_string();
    let mut dataplane = sandbox.install(&one_service("10.96.0.10:80", &[&backend])?)?;
    vip_leak_counters(&sandbox, &["10.96.0.10"])?;
    set_optmem_max(&sandbox, 16)?;
    let result = sandbox.probe_tcp("10.96.0.10:80", 3)?;
    assert_eq!(result.errors.get("ECONNREFUSED"), Some(&3), "{result:?}");
    assert_eq!(dataplane.events()?.reverse_full, 3);

    let udp = sandbox.serve_udp("127.0.0.11:5353", "u1")?.to_string();
    dataplane.apply(&one_udp_service("10.96.0.10:53", &[&udp])?, ApplyTo::default())?;
    let script = "
import socket, errno
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    c.connect(('10.96.0.10', 53))
    print('connected')
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(5)
u.sendto(b'q', ('10.96.0.10', 53))
data, source = u.recvfrom(512)
print(data.decode().strip(), f'{source[0]}:{source[1]}')
";
    let lines = sandbox.python_lines(script, &[])?;
    assert_eq!(lines, ["ECONNREFUSED", "u1 10.96.0.10:53"]);
    assert_eq!(dataplane.events()?.reverse_full, 4);
    assert_eq!(packets_sent_to(&sandbox, "10.96.0.10")?, 0, "a packet left for the VIP");

    // With room for the record again, the same connect goes through.
    set_optmem_max(&sandbox, 131_072)?;
    assert_eq!(sandbox.python_lines(script, &[])?, ["connected", "u1 10.96.0.10:53"]);
    assert_eq!(dataplane.events()?.reverse_full, 4);
    Ok(())
}
