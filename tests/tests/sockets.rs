//! Socket semantics through a VIP, seen by real clients in the real kernel: unconnected UDP
//! (`sendto()`/`recvfrom()`), connected UDP and TCP (`getpeername()`), IPv4 and IPv6, the
//! reverse entries checked against the live set, and fail-closed lookups.
use std::collections::BTreeSet;

use anyhow::{ensure, Context as _, Result};
use reconciler::dataplane::{ApplyTo, Dataplane};
use reconciler_core::state::MapState;
use reconciler_tests::{one_service, one_udp_service, Running, Sandbox};

const PRELUDE: &str = "
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ':' in host else socket.AF_INET
def show(address):
    return f'{address[0]}:{address[1]}' if family == socket.AF_INET else f'[{address[0]}]:{address[1]}'
";

/// `sockets` unconnected UDP sockets, each `sendto()`s 3 requests to HOST:PORT and prints
/// `reply-name source` per reply.
const UNCONNECTED: &str = "
for _ in range(int(sys.argv[3])):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(5)
    for _ in range(3):
        s.sendto(b'q', (host, port))
        data, source = s.recvfrom(512)
        print(data.decode().strip(), show(source))
    s.close()
";

/// One connected UDP socket and one TCP socket: `getpeername()` of each, and the UDP reply's
/// source.
const CONNECTED: &str = "
u = socket.socket(family, socket.SOCK_DGRAM)
u.settimeout(5)
u.connect((host, port))
print('udp-peer', show(u.getpeername()))
u.send(b'q')
data, source = u.recvfrom(512)
print('udp-reply', data.decode().strip(), show(source))
t = socket.create_connection((host, port), timeout=5)
print('tcp-peer', show(t.getpeername()))
";

/// A VIP with UDP and TCP on one port, each of `backends` (`IP:PORT`) serving both.
fn udp_and_tcp_world(test: &str, vip: &str, backends: [&str; 3]) -> Result<Sandbox> {
    let mut sandbox = Sandbox::new(test)?;
    for (i, backend) in backends.iter().enumerate() {
        let name = format!("b{}", i + 1);
        sandbox.serve_udp(backend, &name)?;
        sandbox.serve_tcp(backend, &name)?;
    }
    let refs = &backends[..];
    // The same VIP and port over TCP, with the same backends (service ID 2).
    let desired =
        with_second_service(one_udp_service(vip, refs)?, one_service(vip, refs)?, 2, "test-tcp");
    sandbox.install(&desired)?;
    Ok(sandbox)
}

/// Splits `VIP:PORT` (`[v6]:PORT` too) into what Python's socket takes.
fn host_and_port(vip: &str) -> Result<(&str, &str)> {
    let (host, port) = vip.rsplit_once(':').context("VIP:PORT")?;
    Ok((host.trim_start_matches('[').trim_end_matches(']'), port))
}

/// `desired` with `other`'s services added as service `id` (named `name`), their backends'
/// IDs 10 up.
fn with_second_service(mut desired: MapState, other: MapState, id: u32, name: &str) -> MapState {
    for (frontend, mut entry) in other.services {
        entry.id = id;
        desired.services.insert(frontend, entry);
    }
    for ((_, slot), backend) in other.slots {
        desired.slots.insert((id, slot), backend + 10);
    }
    for (backend_id, mut backend) in other.backends {
        backend.service_id = id;
        desired.backends.insert(backend_id + 10, backend);
    }
    desired.names.insert(id, name.into());
    desired
}

/// One UDP service at `vip` whose backend 1 left, backend 2 at `backend` in its place.
fn replaced_by(vip: &str, backend: &str) -> Result<MapState> {
    let mut moved = one_udp_service(vip, &[backend])?;
    let entry = moved.backends.remove(&1).context("backend 1")?;
    moved.backends.insert(2, entry);
    moved.slots.insert((1, 0), 2);
    Ok(moved)
}

/// The VIP of [`udp_service_of_b1`].
const UDP_VIP: &str = "10.96.0.53:53";

/// A sandbox serving UDP as b1 and b2 (their addresses), and a data plane whose one service,
/// UDP at [`UDP_VIP`], has b1 alone.
fn udp_service_of_b1(test: &str) -> Result<(Sandbox, [String; 2], Dataplane)> {
    let mut sandbox = Sandbox::new(test)?;
    let b1 = sandbox.serve_udp("127.0.0.11:5300", "b1")?.to_string();
    let b2 = sandbox.serve_udp("127.0.0.12:5300", "b2")?.to_string();
    let dataplane = sandbox.install(&one_udp_service(UDP_VIP, &[&b1])?)?;
    Ok((sandbox, [b1, b2], dataplane))
}

fn unconnected_udp_replies_come_from_the_vip(
    test: &str,
    vip: &str,
    backends: [&str; 3],
) -> Result<()> {
    let sandbox = udp_and_tcp_world(test, vip, backends)?;
    let (host, port) = host_and_port(vip)?;
    let lines = sandbox.python_lines(&format!("{PRELUDE}{UNCONNECTED}"), &[host, port, "40"])?;
    assert_eq!(lines.len(), 120, "{lines:?}");
    let mut per_socket_backends = Vec::new();
    for socket in lines.chunks(3) {
        let names: BTreeSet<&str> =
            socket.iter().map(|l| l.split_whitespace().next().unwrap_or("")).collect();
        for line in socket {
            assert!(line.ends_with(&format!(" {vip}")), "a reply not from the VIP: {line}");
        }
        // A request and its retries reach one backend.
        assert_eq!(names.len(), 1, "one socket reached several backends: {socket:?}");
        per_socket_backends.extend(names.into_iter().map(str::to_owned));
    }
    // Different sockets spread over the backends.
    let spread: BTreeSet<&String> = per_socket_backends.iter().collect();
    assert_eq!(spread.len(), 3, "{per_socket_backends:?}");
    // A reply from an address that is no VIP is untouched.
    let (host, port) = host_and_port(backends[0])?;
    let lines = sandbox.python_lines(&format!("{PRELUDE}{UNCONNECTED}"), &[host, port, "1"])?;
    assert_eq!(lines, vec![format!("b1 {}", backends[0]); 3]);
    Ok(())
}

const IPV4_BACKENDS: [&str; 3] = ["127.0.0.11:5300", "127.0.0.12:5300", "127.0.0.13:5300"];
/// IPv6 has one loopback address: three ports on it stand for three backends.
const IPV6_BACKENDS: [&str; 3] = ["[::1]:5301", "[::1]:5302", "[::1]:5303"];

#[test]
fn unconnected_udp_over_ipv4_is_answered_from_the_vip_by_one_backend_per_socket() -> Result<()> {
    unconnected_udp_replies_come_from_the_vip("udp4", "10.96.0.53:53", IPV4_BACKENDS)
}

#[test]
fn unconnected_udp_over_ipv6_is_answered_from_the_vip_by_one_backend_per_socket() -> Result<()> {
    unconnected_udp_replies_come_from_the_vip("udp6", "[fd00:96::53]:53", IPV6_BACKENDS)
}

fn connected_sockets_see_the_vip(test: &str, vip: &str, backends: [&str; 3]) -> Result<()> {
    let sandbox = udp_and_tcp_world(test, vip, backends)?;
    let (host, port) = host_and_port(vip)?;
    let lines = sandbox.python_lines(&format!("{PRELUDE}{CONNECTED}"), &[host, port])?;
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0], format!("udp-peer {vip}"));
    assert!(
        lines[1].starts_with("udp-reply b") && lines[1].ends_with(&format!(" {vip}")),
        "{lines:?}"
    );
    assert_eq!(lines[2], format!("tcp-peer {vip}"));
    Ok(())
}

#[test]
fn getpeername_of_connected_udp_and_tcp_sockets_is_the_vip_over_ipv4() -> Result<()> {
    connected_sockets_see_the_vip("peer4", "10.96.0.53:53", IPV4_BACKENDS)
}

#[test]
fn getpeername_of_connected_udp_and_tcp_sockets_is_the_vip_over_ipv6() -> Result<()> {
    connected_sockets_see_the_vip("peer6", "[fd00:96::53]:53", IPV6_BACKENDS)
}

#[test]
fn a_connected_socket_shows_the_vip_as_its_peer_for_its_whole_life() -> Result<()> {
    let mut sandbox = Sandbox::new("peerlife")?;
    let b1 = sandbox.serve_tcp("127.0.0.11:8080", "b1")?.to_string();
    let dataplane = sandbox.install(&one_service("10.96.0.10:80", &[&b1])?)?;
    let active = dataplane.status()?.active_set;
    // A TCP socket connected through the VIP asks for its peer, before and after its
    // backend disappears from the live set behind user space's back: its record is its own,
    // so it still names the VIP the application connected to.
    let script = format!(
        "{PRELUDE}
t = socket.create_connection((host, port), timeout=5)
print(show(t.getpeername()), flush=True)
sys.stdin.readline()
print(show(t.getpeername()), flush=True)
"
    );
    let mut client = sandbox.python_session(&script, &["10.96.0.10", "80"])?;
    assert_eq!(client.line()?, "10.96.0.10:80");

    let mut key = 1u32.to_le_bytes().to_vec();
    key.extend([active, 0, 0, 0]);
    sandbox.delete_by_hand("BACKENDS", &key)?;
    assert_eq!(client.finish()?, ["10.96.0.10:80"]);
    Ok(())
}

#[test]
fn a_reverse_entry_whose_backend_left_the_live_set_is_not_used_and_is_counted() -> Result<()> {
    let mut sandbox = Sandbox::new("stale")?;
    let b1 = sandbox.serve_udp("127.0.0.11:5300", "b1")?.to_string();
    let b2 = sandbox.serve_udp("127.0.0.12:5300", "b2")?.to_string();
    // Two UDP services, one backend each (IDs 1 and 11).
    let first = one_udp_service("10.96.0.53:53", &[&b1])?;
    let desired =
        with_second_service(first, one_udp_service("10.96.0.54:53", &[&b2])?, 2, "second");
    let dataplane = sandbox.install(&desired)?;
    let active = dataplane.status()?.active_set;
    // One unconnected socket talks to both VIPs: its record holds the second, `REVERSE` the
    // first. Then b1 leaves the live set behind user space's back, and the socket sends to
    // b1's own address: the reply is b1's, and the stale entry must not make it the VIP's.
    let script = "
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
for target in [('10.96.0.53', 53), ('10.96.0.54', 53)]:
    s.sendto(b'q', target)
    data, source = s.recvfrom(512)
    print(data.decode().strip(), f'{source[0]}:{source[1]}', flush=True)
sys.stdin.readline()
s.sendto(b'q', ('127.0.0.11', 5300))
data, source = s.recvfrom(512)
print(data.decode().strip(), f'{source[0]}:{source[1]}', flush=True)
";
    let mut client = sandbox.python_session(script, &[])?;
    assert_eq!([client.line()?, client.line()?], ["b1 10.96.0.53:53", "b2 10.96.0.54:53"]);

    let mut key = 1u32.to_le_bytes().to_vec();
    key.extend([active, 0, 0, 0]);
    sandbox.delete_by_hand("BACKENDS", &key)?;
    assert_eq!(client.finish()?, [format!("b1 {b1}")], "a stale entry still translated");
    assert_eq!(dataplane.events()?.reverse_stale, 1);
    Ok(())
}

/// `dig` against a real `dnsmasq` behind a UDP VIP: dig drops a reply whose source is not
/// the address it asked, so an answer proves the reply was translated back.
fn dig_through_a_udp_vip(test: &str, vip: &str, listen: &str) -> Result<()> {
    let sandbox = Sandbox::new(test)?;
    let backend = format!(
        "{}:53",
        if listen.contains(':') { format!("[{listen}]") } else { listen.to_owned() }
    );
    let dnsmasq = sandbox
        .command("dnsmasq")?
        .args(["--keep-in-foreground", "--conf-file=/dev/null", "--no-hosts", "--no-resolv"])
        .args(["--bind-interfaces", "--port=53", "--pid-file=", "--user=root"])
        .arg(format!("--listen-address={listen}"))
        .arg("--address=/web.example.test/10.1.0.11")
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting dnsmasq (installed by `make setup`)")?;
    let _dnsmasq = Running(dnsmasq);
    sandbox.install(&one_udp_service(vip, &[&backend])?)?;
    let (host, _) = host_and_port(vip)?;
    // dnsmasq may still be binding: a few tries, each with dig's own short timeout.
    let mut last = String::new();
    for _ in 0..10 {
        let output = sandbox
            .command("dig")?
            .args([&format!("@{host}"), "web.example.test", "A", "+short", "+tries=1", "+time=1"])
            .output()?;
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if output.status.success() && last.trim() == "10.1.0.11" {
            return Ok(());
        }
    }
    anyhow::bail!("dig through {vip} never got its answer; last output:\n{last}")
}

#[test]
fn dig_gets_an_answer_from_dnsmasq_behind_an_ipv4_udp_vip() -> Result<()> {
    dig_through_a_udp_vip("dig4", "10.96.0.53:53", "127.0.0.53")
}

#[test]
fn dig_gets_an_answer_from_dnsmasq_behind_an_ipv6_udp_vip() -> Result<()> {
    dig_through_a_udp_vip("dig6", "[fd00:96::53]:53", "::1")
}

#[test]
fn a_connected_udp_socket_whose_backend_is_removed_is_destroyed_over_ipv4() -> Result<()> {
    stale_connected_udp_is_destroyed("destroy4", "10.96.0.53:53", IPV4_BACKENDS)
}

#[test]
fn a_connected_udp_socket_whose_backend_is_removed_is_destroyed_over_ipv6() -> Result<()> {
    stale_connected_udp_is_destroyed("destroy6", "[fd00:96::53]:53", IPV6_BACKENDS)
}

fn stale_connected_udp_is_destroyed(test: &str, vip: &str, backends: [&str; 3]) -> Result<()> {
    let mut sandbox = Sandbox::new(test)?;
    let b1 = sandbox.serve_udp(backends[0], "b1")?.to_string();
    let b2 = sandbox.serve_udp(backends[1], "b2")?.to_string();
    let mut dataplane = sandbox.install(&one_udp_service(vip, &[&b1])?)?;
    // A connected socket and an unconnected one, both talking to b1 through the VIP; then
    // b1 leaves the service and b2 takes its place; then each talks again.
    let script = format!(
        "{PRELUDE}
c = socket.socket(family, socket.SOCK_DGRAM)
c.settimeout(5)
c.connect((host, port))
c.send(b'q')
print('connected', c.recv(512).decode().strip(), flush=True)
u = socket.socket(family, socket.SOCK_DGRAM)
u.settimeout(5)
u.sendto(b'q', (host, port))
print('unconnected', u.recvfrom(512)[0].decode().strip(), flush=True)
sys.stdin.readline()
import errno
for call in (lambda: c.recv(512), lambda: c.send(b'q')):
    try:
        print('connected', call(), flush=True)
    except OSError as e:
        print('connected', errno.errorcode.get(e.errno, e.errno), flush=True)
u.sendto(b'q', (host, port))
print('unconnected', u.recvfrom(512)[0].decode().strip(), flush=True)
"
    );
    let (host, port) = host_and_port(vip)?;
    let mut client = sandbox.python_session(&script, &[host, port])?;
    assert_eq!([client.line()?, client.line()?], ["connected b1", "unconnected b1"]);

    let moved = replaced_by(vip, &b2)?;
    let report = dataplane.apply(&moved, ApplyTo::default())?;
    assert_eq!((report.sockets_destroyed, report.sockets_error.as_deref()), (1, None));

    let rest = client.finish()?;
    // The socket's pending error reaches the next receive; after it the socket is no longer
    // connected, so a send without an address fails too: the client connects again.
    assert_eq!(rest, ["connected ECONNABORTED", "connected EDESTADDRREQ", "unconnected b2"]);
    Ok(())
}

#[test]
fn unconnected_udp_sockets_keep_their_backend_while_it_stays_usable() -> Result<()> {
    let mut sandbox = Sandbox::new("udp-keep")?;
    let vip = "10.96.0.53:53";
    let b: Vec<String> = (1..=3)
        .map(|i| {
            Ok(sandbox.serve_udp(&format!("127.0.0.1{i}:5300"), &format!("b{i}"))?.to_string())
        })
        .collect::<Result<_>>()?;
    let two = one_udp_service(vip, &[&b[0], &b[1]])?;
    let mut dataplane = sandbox.install(&two)?;
    // 40 unconnected sockets; at each step every one sends a datagram to the VIP and the
    // client prints the backend that answered each, in socket order.
    let script = "
import socket, sys
sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(40)]
def round():
    names = []
    for s in sockets:
        s.settimeout(5)
        s.sendto(b'q', ('10.96.0.53', 53))
        names.append(s.recvfrom(512)[0].decode().strip())
    print(' '.join(names), flush=True)
round()
for line in sys.stdin:
    round()
";
    let mut client = sandbox.python_session(script, &[])?;
    let first: Vec<String> = client.line()?.split(' ').map(str::to_owned).collect();
    assert_eq!(first.len(), 40);
    assert!(first.iter().any(|n| n == "b1") && first.iter().any(|n| n == "b2"), "{first:?}");

    // A third backend: no socket moves.
    let three = one_udp_service(vip, &[&b[0], &b[1], &b[2]])?;
    dataplane.apply(&three, ApplyTo::default())?;
    let second: Vec<String> = client.go_on()?.split(' ').map(str::to_owned).collect();
    assert_eq!(second, first, "sockets moved when a backend was added");

    // b1 leaves: its sockets move, and only they.
    let mut without_b1 = three.clone();
    without_b1.backends.remove(&1);
    without_b1.slots = [((1, 0), 2), ((1, 1), 3)].into();
    for entry in without_b1.services.values_mut() {
        entry.slot_count = 2;
    }
    dataplane.apply(&without_b1, ApplyTo::default())?;
    let third: Vec<String> = client.go_on()?.split(' ').map(str::to_owned).collect();
    for (before, after) in first.iter().zip(&third) {
        if before == "b1" {
            assert_ne!(after, "b1", "{third:?}");
        } else {
            assert_eq!(after, before, "a socket of a backend that stayed moved: {third:?}");
        }
    }
    Ok(())
}

#[test]
fn a_connected_udp_socket_keeps_its_record_through_a_million_and_a_half_translations() -> Result<()>
{
    let (sandbox, [_, b2], mut dataplane) = udp_service_of_b1("record-life")?;
    let vip = UDP_VIP;
    let script = format!(
        "{PRELUDE}
import errno
c = socket.socket(family, socket.SOCK_DGRAM)
c.settimeout(5)
c.connect((host, port))
c.send(b'q')
print(c.recv(512).decode().strip(), show(c.getpeername()), flush=True)
sys.stdin.readline()
print(show(c.getpeername()), flush=True)
sys.stdin.readline()
try:
    print(c.recv(512))
except OSError as e:
    print(errno.errorcode.get(e.errno, e.errno))
"
    );
    let (host, port) = host_and_port(vip)?;
    let mut client = sandbox.python_session(&script, &[host, port])?;
    assert_eq!(client.line()?, format!("b1 {vip}"));

    // 1.5 million translations by other sockets (Cilium's LRU forgets the first socket's
    // after 400 000 of them, here as there).
    let output = sandbox
        .command(reconciler_tests::probe_path()?)?
        .args(["udp-connects", vip, "1500000"])
        .output()?;
    ensure!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(client.go_on()?, vip, "getpeername() lost the VIP");

    // b1 leaves the service: the socket is found by its own record and destroyed.
    let moved = replaced_by(vip, &b2)?;
    let report = dataplane.apply(&moved, ApplyTo::default())?;
    assert_eq!((report.sockets_destroyed, report.sockets_error.as_deref()), (1, None));
    assert_eq!(client.finish()?, ["ECONNABORTED"]);
    Ok(())
}

/// A client that takes a namespace of its own (`unshare`), where it answers as b1 at
/// 127.0.0.11:5300 itself, connects a UDP socket through the VIP there, and moves on to yet
/// another namespace: the socket's namespace keeps no task, mount or file, only the socket.
const MOVED_AWAY: &str = "
import ctypes, errno, socket, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
def new_namespace():
    if libc.unshare(0x40000000) != 0:
        raise OSError(ctypes.get_errno(), 'unshare(CLONE_NEWNET)')
    subprocess.run(['ip', 'link', 'set', 'lo', 'up'], check=True)
new_namespace()
server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
server.bind(('127.0.0.11', 5300))
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.settimeout(5)
c.connect((sys.argv[1], int(sys.argv[2])))
c.send(b'q')
_, peer = server.recvfrom(512)
server.sendto(b'b1', peer)
server.close()
print(c.recv(512).decode(), flush=True)
new_namespace()
sys.stdin.readline()
try:
    print(c.recv(512))
except OSError as e:
    print(errno.errorcode.get(e.errno, e.errno))
";

/// Issue 22: a connected UDP socket in a network namespace no process is in any more (its
/// process moved away, keeping the socket) is found through the socket and destroyed.
#[test]
fn a_connected_udp_socket_whose_namespace_has_no_process_is_destroyed() -> Result<()> {
    let sandbox = Sandbox::new("udp-moved-away")?;
    let vip = "10.96.0.53:53";
    let mut dataplane = sandbox.install(&one_udp_service(vip, &["127.0.0.11:5300"])?)?;
    let (host, port) = host_and_port(vip)?;
    let mut client = sandbox.python_session(MOVED_AWAY, &[host, port])?;
    assert_eq!(client.line()?, "b1");

    let moved = replaced_by(vip, "127.0.0.12:5300")?;
    let report = dataplane.apply(&moved, ApplyTo::default())?;
    assert_eq!((report.sockets_destroyed, report.sockets_error.as_deref()), (1, None));
    assert_eq!(client.finish()?, ["ECONNABORTED"]);
    Ok(())
}

/// Issue 22: a socket that talked through the VIP and then connected straight to a backend is
/// the application's own: its replies and `getpeername()` show the backend, and it is not
/// destroyed when that backend leaves the service.
#[test]
fn a_socket_connected_straight_to_a_backend_after_the_vip_is_left_alone() -> Result<()> {
    let (sandbox, [b1, b2], mut dataplane) = udp_service_of_b1("udp-direct")?;
    let vip = UDP_VIP;
    let script = format!(
        "{PRELUDE}
backend = (sys.argv[3], int(sys.argv[4]))
u = socket.socket(family, socket.SOCK_DGRAM)
u.settimeout(5)
u.sendto(b'q', (host, port))
data, source = u.recvfrom(512)
print('sent to the vip', data.decode().strip(), show(source), flush=True)
u.connect(backend)
u.send(b'q')
data, source = u.recvfrom(512)
print('then direct', data.decode().strip(), show(source), show(u.getpeername()), flush=True)
c = socket.socket(family, socket.SOCK_DGRAM)
c.settimeout(5)
c.connect((host, port))
print('connected to the vip', show(c.getpeername()), flush=True)
c.connect(backend)
c.send(b'q')
data, source = c.recvfrom(512)
print('then direct', data.decode().strip(), show(source), show(c.getpeername()), flush=True)
sys.stdin.readline()
for s in (u, c):
    s.send(b'q')
    data, source = s.recvfrom(512)
    print('after', data.decode().strip(), show(source))
"
    );
    let (host, port) = host_and_port(vip)?;
    let (b1_host, b1_port) = host_and_port(&b1)?;
    let mut client = sandbox.python_session(&script, &[host, port, b1_host, b1_port])?;
    let lines = [client.line()?, client.line()?, client.line()?, client.line()?];
    let direct = format!("then direct b1 {b1} {b1}");
    assert_eq!(
        lines,
        [
            format!("sent to the vip b1 {vip}"),
            direct.clone(),
            format!("connected to the vip {vip}"),
            direct
        ]
    );

    let moved = replaced_by(vip, &b2)?;
    let report = dataplane.apply(&moved, ApplyTo::default())?;
    assert_eq!((report.sockets_destroyed, report.sockets_error.as_deref()), (0, None));
    let after = format!("after b1 {b1}");
    assert_eq!(client.finish()?, [after.clone(), after]);
    Ok(())
}

/// Issue 22: `REVERSE` entries the LRU evicts to make room are counted, and `status` shows
/// them: 200 sockets each send to two UDP services, so each gives up one translation to
/// `REVERSE`, which holds 64.
#[test]
fn reply_map_evictions_are_counted_and_shown_by_status() -> Result<()> {
    let mut sandbox = Sandbox::new("reverse-evicted")?;
    let b1 = sandbox.serve_udp("127.0.0.11:5300", "b1")?.to_string();
    let first = one_udp_service("10.96.0.53:53", &[&b1])?;
    let desired =
        with_second_service(first, one_udp_service("10.96.0.54:53", &[&b1])?, 2, "second");
    let capacity = reconciler_core::capacity::Capacity {
        connections: 64,
        ..reconciler_core::capacity::DEFAULT
    };
    reconciler::dataplane::Install::new(sandbox.pin_path(), sandbox.cgroup())
        .capacity(capacity)
        .fill(&desired, None)
        .run()?;
    let script = "
import socket
for _ in range(200):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    for vip in ('10.96.0.53', '10.96.0.54'):
        s.sendto(b'q', (vip, 53))
        s.recvfrom(512)
    s.close()
print('done')
";
    assert_eq!(sandbox.python_lines(script, &[])?, ["done"]);
    let output = std::process::Command::new(reconciler_tests::reconciler_path()?)
        .args(["status", "--output", "json", "--pin-path"])
        .arg(sandbox.pin_path())
        .output()?;
    ensure!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let status: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(status["events"]["reverse_added"], 200, "{status}");
    let held = status["memory"]["maps"]
        .as_array()
        .and_then(|maps| maps.iter().find(|m| m["name"] == "REVERSE"))
        .and_then(|m| m["entries"].as_u64())
        .context("REVERSE's entries")?;
    assert!(held <= 64, "{status}");
    assert_eq!(status["reverse_evicted"], 200 - held, "{status}");
    Ok(())
}
