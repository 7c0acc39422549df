//! A sandbox for real-kernel tests: a fresh network namespace (loopback only), a child
//! cgroup v2 directory and a pin directory of its own, real listeners inside the namespace,
//! and client processes that run inside both the cgroup and the namespace.
//!
//! Network safety: every listener and client lives in the sandbox's own namespace, where
//! only `lo` exists. A VIP that the hook failed to rewrite cannot leave the machine; the
//! connect fails with ENETUNREACH instead.
//!
//! Everything is removed on drop, also when a test panics: the data plane under the pin
//! directory, the listeners, the cgroup; the namespace goes with its last file descriptor.
use std::{
    collections::BTreeMap,
    ffi::CString,
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, UdpSocket},
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    thread::JoinHandle,
    time::{Duration, Instant},
};

pub mod docs;
pub mod git;
pub mod gitops;
pub mod gpg;
pub mod netns_daemon;
pub mod prometheus;
pub mod receiver;
pub mod source;

use anyhow::{bail, ensure, Context as _, Result};
use reconciler::dataplane::{self, ApplyTo, Dataplane};
use reconciler_core::state::{
    Algorithm, BackendEntry, BackendState, Client, Frontend, MapState, Protocol, ServiceEntry,
};

static SANDBOXES: AtomicU32 = AtomicU32::new(0);

/// The value of the sample `name` (with its labels, as written) in a metrics text.
pub fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, check: impl FnMut() -> Option<T>) -> Result<T> {
    wait_for_every(Duration::from_millis(50), what, limit, check)
}

/// [`wait_for`], polling every `every` (the bench times what it waits for).
pub fn wait_for_every<T>(
    every: Duration,
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
}

/// Fails with a clear message unless the process can do what the sandbox needs.
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "real-kernel tests need root (BPF, cgroups, network namespaces): run `sudo make test`"
        );
    }
    Ok(())
}

pub struct Sandbox {
    netns: OwnedFd,
    cgroup: PathBuf,
    pin_path: PathBuf,
    servers: Vec<Server>,
    /// Child cgroups of `cgroup` made by `client_cgroups`, removed before it.
    clients: Vec<PathBuf>,
}

impl Sandbox {
    /// A new namespace with `lo` up, a child cgroup and an unused pin path.
    pub fn new(test: &str) -> Result<Self> {
        require_root()?;
        let name = format!(
            "reconciler-test-{}-{}-{test}",
            std::process::id(),
            SANDBOXES.fetch_add(1, Ordering::Relaxed)
        );
        let netns = std::thread::spawn(|| -> Result<OwnedFd> {
            // CLONE_NEWNET applies to this thread only; the namespace outlives the thread
            // through the file descriptor.
            // SAFETY: unshare takes no pointers.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNET)");
            }
            Ok(fs::File::open("/proc/thread-self/ns/net")
                .context("opening the new network namespace")?
                .into())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("namespace thread panicked"))??;
        let cgroup = dataplane::default_cgroup()?.join(&name);
        fs::create_dir(&cgroup).with_context(|| format!("creating cgroup {}", cgroup.display()))?;
        let sandbox = Sandbox {
            pin_path: Path::new("/sys/fs/bpf").join(&name),
            netns,
            cgroup,
            servers: Vec::new(),
            clients: Vec::new(),
        };
        sandbox.run(&["ip", "link", "set", "lo", "up"])?;
        Ok(sandbox)
    }

    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    pub fn pin_path(&self) -> &Path {
        &self.pin_path
    }

    /// Whether something in the namespace accepts connections on `socket` (within 200 ms).
    pub fn accepts(&self, socket: SocketAddr) -> bool {
        let timeout = Duration::from_millis(200);
        let connect = move || Ok(std::net::TcpStream::connect_timeout(&socket, timeout).is_ok());
        self.in_netns(connect).unwrap_or(false)
    }

    /// A path of the namespace, for `ip ... netns PATH` (which opens a name with a slash as a
    /// path): this process' descriptor of it.
    pub fn netns_path(&self) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), self.netns.as_raw_fd())
    }

    /// Runs `f` on a thread inside the namespace; sockets it makes stay in the namespace.
    pub fn in_netns<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let fd = self.netns.try_clone()?;
        std::thread::spawn(move || {
            // SAFETY: fd is an open network namespace file.
            if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setns");
            }
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in the namespace panicked"))?
    }

    /// A command that runs inside the sandbox: in its cgroup and its network namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        let procs =
            CString::new(self.cgroup.join("cgroup.procs").into_os_string().into_encoded_bytes())?;
        let netns = self.netns.as_raw_fd();
        let mut command = Command::new(program);
        // SAFETY: the closure runs between fork and exec and makes only raw syscalls.
        unsafe {
            command.pre_exec(move || {
                // Join the cgroup first: /sys stays the host's view while we are still here.
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" moves the writing process itself.
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if written != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setns(netns, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(command)
    }

    /// Runs `argv` inside the sandbox and fails unless it exits 0.
    pub fn run(&self, argv: &[&str]) -> Result<Output> {
        let output = self
            .command(argv[0])?
            .args(&argv[1..])
            .output()
            .with_context(|| format!("running {argv:?}"))?;
        ensure!(
            output.status.success(),
            "{argv:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(output)
    }

    /// A TCP server inside the namespace that answers every request with `name` and closes;
    /// two threads accept, so the server is not what limits a benchmark.
    pub fn serve_tcp(&mut self, addr: &str, name: &str) -> Result<SocketAddr> {
        let addr: SocketAddr = addr.parse().with_context(|| format!("address {addr}"))?;
        let listener = self.in_netns(move || {
            TcpListener::bind(addr).with_context(|| format!("binding {addr} in the namespace"))
        })?;
        let local = listener.local_addr()?;
        let mut threads = Vec::new();
        for _ in 0..2 {
            let listener = listener.try_clone()?;
            let name = name.to_owned();
            // Ends when Server::drop shuts the listener down and accept fails.
            threads.push(std::thread::spawn(move || {
                while let Ok((stream, _)) = listener.accept() {
                    let _ = answer(stream, &name);
                }
            }));
        }
        self.servers.push(Server { socket: listener.into(), addr: local, threads });
        Ok(local)
    }

    /// A UDP server inside the namespace that answers every datagram with `name`, sent to
    /// the datagram's source.
    pub fn serve_udp(&mut self, addr: &str, name: &str) -> Result<SocketAddr> {
        let addr: SocketAddr = addr.parse().with_context(|| format!("address {addr}"))?;
        let socket = self.in_netns(move || {
            UdpSocket::bind(addr).with_context(|| format!("binding {addr} in the namespace"))
        })?;
        let local = socket.local_addr()?;
        let receiver = socket.try_clone()?;
        let name = format!("{name}\n");
        // Ends when Server::drop shuts the socket down and recv_from returns nothing.
        let thread = std::thread::spawn(move || {
            let mut buffer = [0u8; 512];
            while let Ok((n, from)) = receiver.recv_from(&mut buffer) {
                if n == 0 {
                    break;
                }
                let _ = receiver.send_to(name.as_bytes(), from);
            }
        });
        self.servers.push(Server { socket: socket.into(), addr: local, threads: vec![thread] });
        Ok(local)
    }

    /// `count` more child cgroups of the sandbox's cgroup (`client-N`): each is a client of
    /// its own to the data plane (its cgroup ID), for as long as the sandbox lives.
    pub fn client_cgroups(&mut self, count: usize) -> Result<Vec<PathBuf>> {
        let mut made = Vec::new();
        for _ in 0..count {
            let dir = self.cgroup.join(format!("client-{}", self.clients.len()));
            fs::create_dir(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
            self.clients.push(dir.clone());
            made.push(dir);
        }
        Ok(made)
    }

    /// Runs the probe inside the sandbox, which moves itself into each of `cgroups` in turn
    /// and connects `count` times to `target` (TCP) from each: the backend names each
    /// cgroup's connects reached (or `error:ERRNO`), in order, with the cgroup's ID.
    pub fn connect_from_cgroups(
        &self,
        target: &str,
        count: u32,
        cgroups: &[PathBuf],
    ) -> Result<Vec<ClientReplies>> {
        let mut args = vec!["tcp-from-cgroups".into(), target.into(), count.to_string().into()];
        args.extend(cgroups.iter().map(|c| c.as_os_str().to_owned()));
        self.run_probe(&args)?
            .lines()
            .map(|line| {
                let mut fields = line.split_whitespace();
                let cgroup_id = fields.next().context("empty probe line")?.parse()?;
                Ok(ClientReplies { cgroup_id, replies: fields.map(str::to_owned).collect() })
            })
            .collect()
    }

    /// Stops the server at `addr` (a backend dies): connects to it are refused from now on.
    pub fn stop_server(&mut self, addr: &str) -> Result<()> {
        let addr: SocketAddr = addr.parse().with_context(|| format!("address {addr}"))?;
        let before = self.servers.len();
        self.servers.retain(|server| server.addr != addr);
        ensure!(self.servers.len() < before, "no server at {addr}");
        Ok(())
    }

    /// A command that runs in the sandbox's network namespace but not in its cgroup: a
    /// daemon or health checker, whose own connects the data plane must not translate.
    pub fn command_in_netns(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let netns = self.netns.as_raw_fd();
        let mut command = Command::new(program);
        // SAFETY: the closure runs between fork and exec and makes one raw syscall.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(netns, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
    }

    /// Packets sent on the namespace's `lo` so far.
    pub fn lo_tx_packets(&self) -> Result<u64> {
        self.in_netns(|| {
            let dev = fs::read_to_string("/proc/thread-self/net/dev")?;
            let line = dev
                .lines()
                .find(|l| l.trim_start().starts_with("lo:"))
                .context("no lo in /proc/net/dev")?;
            // face: rx bytes packets errs drop fifo frame compressed multicast, tx bytes packets
            let fields: Vec<&str> = line.split_whitespace().collect();
            Ok(fields.get(10).context("short /proc/net/dev line")?.parse()?)
        })
    }

    /// Runs the probe client inside the sandbox: `count` TCP connects to `target`.
    pub fn probe_tcp(&self, target: &str, count: u32) -> Result<ProbeResult> {
        ProbeResult::parse(&self.run_probe(&[
            "tcp".into(),
            target.into(),
            count.to_string().into(),
        ])?)
    }

    /// Runs the probe inside the sandbox with `args`; its standard output, if it succeeded.
    fn run_probe(&self, args: &[std::ffi::OsString]) -> Result<String> {
        let output =
            self.command(probe_path()?)?.args(args).output().context("running the probe")?;
        ensure!(
            output.status.success(),
            "probe failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Starts the probe client inside the sandbox, connecting to `target` until `stop_file`
    /// exists; [`RunningProbe::wait`] collects what it saw.
    pub fn spawn_probe_until(&self, stop_file: &Path, target: &str) -> Result<RunningProbe> {
        let child = self
            .command(probe_path()?)?
            .arg("tcp-until")
            .arg(stop_file)
            .arg(target)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("starting the probe")?;
        Ok(RunningProbe { child: Some(child) })
    }

    /// Installs the data plane on the sandbox and applies `desired` to it.
    pub fn install(&self, desired: &MapState) -> Result<Dataplane> {
        let mut dataplane = Dataplane::install(&self.pin_path, &self.cgroup)?;
        dataplane.apply(desired, ApplyTo::default())?;
        Ok(dataplane)
    }

    /// Runs a Python client inside the sandbox; returns its stdout lines.
    pub fn python_lines(&self, script: &str, args: &[&str]) -> Result<Vec<String>> {
        let output = self.command("python3")?.arg("-c").arg(script).args(args).output()?;
        ensure!(
            output.status.success(),
            "python client failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect())
    }

    /// Deletes `key` (bytes) from the sandbox's pinned map `map` with bpftool, as a bug or a
    /// hand would.
    pub fn delete_by_hand(&self, map: &str, key: &[u8]) -> Result<()> {
        let status = Command::new("bpftool")
            .args(["map", "delete", "pinned"])
            .arg(self.pin_path.join(map))
            .arg("key")
            .args(key.iter().map(u8::to_string))
            .status()?;
        ensure!(status.success(), "bpftool map delete failed");
        Ok(())
    }

    /// Writes `key` -> `value` (bytes) into the sandbox's pinned map `map` with bpftool, as
    /// a hand would.
    pub fn update_by_hand(&self, map: &str, key: &[u8], value: &[u8]) -> Result<()> {
        let status = Command::new("bpftool")
            .args(["map", "update", "pinned"])
            .arg(self.pin_path.join(map))
            .arg("key")
            .args(key.iter().map(u8::to_string))
            .arg("value")
            .args(value.iter().map(u8::to_string))
            .status()?;
        ensure!(status.success(), "bpftool map update failed");
        Ok(())
    }

    /// Starts a Python client inside the sandbox, running `script` with `args`, that talks
    /// line by line: see [`Session`].
    pub fn python_session(&self, script: &str, args: &[&str]) -> Result<Session> {
        let mut child = Running(
            self.command("python3")?
                .arg("-c")
                .arg(script)
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .context("starting python3 (installed by `make setup`)")?,
        );
        let stdout = child.0.stdout.take().context("the client's stdout")?;
        Ok(Session { child, stdout: std::io::BufReader::new(stdout) })
    }

    /// A client with a UDP socket connected to `target` (IPv4): it sends one request and
    /// prints the reply (`Session::line`), then, once `Session::finish` is called, waits for
    /// another reply and prints it, or the errno name its receive failed with.
    pub fn connected_udp_client(&self, target: &str) -> Result<Session> {
        let target: SocketAddr = target.parse().with_context(|| format!("address {target}"))?;
        let script = "
import socket, sys, errno
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.settimeout(10)
c.connect((sys.argv[1], int(sys.argv[2])))
c.send(b'q')
print(c.recv(512).decode().strip(), flush=True)
sys.stdin.readline()
try:
    print(c.recv(512).decode().strip())
except OSError as e:
    print(errno.errorcode.get(e.errno, e.errno))
";
        self.python_session(script, &[&target.ip().to_string(), &target.port().to_string()])
    }

    /// Programs attached to the sandbox's cgroup, by `bpftool cgroup show`.
    pub fn attached_programs(&self) -> Result<usize> {
        attached_programs(&self.cgroup)
    }
}

/// The key of the SERVICES entry [`add_service_by_hand`] writes: ::ffff:10.96.9.9, port 80
/// (network order), TCP, in map set `set`; as bpftool's decimal byte arguments.
pub fn hand_written_key(set: u8) -> Vec<String> {
    let mut key = vec![0u8; 10];
    key.extend([0xff, 0xff, 10, 96, 9, 9, 0, 80, 6, set]);
    key.iter().map(u8::to_string).collect()
}

/// Writes a SERVICES entry (10.96.9.9:80/TCP, service ID 999, one slot) into map set `set`
/// with bpftool, as an operator might by hand.
pub fn add_service_by_hand(pin_path: &Path, set: u8) -> Result<()> {
    let mut value = 999u32.to_le_bytes().to_vec();
    value.extend(1u32.to_le_bytes());
    value.extend([0u8; 8]);
    let status = Command::new("bpftool")
        .args(["map", "update", "pinned"])
        .arg(pin_path.join("SERVICES"))
        .arg("key")
        .args(hand_written_key(set))
        .arg("value")
        .args(value.iter().map(u8::to_string))
        .status()
        .context("running bpftool (installed by `make setup`)")?;
    ensure!(status.success(), "bpftool map update failed");
    Ok(())
}

/// Whether the entry [`add_service_by_hand`] writes into set `set` is there.
pub fn hand_written_service_exists(pin_path: &Path, set: u8) -> Result<bool> {
    let output = Command::new("bpftool")
        .args(["map", "lookup", "pinned"])
        .arg(pin_path.join("SERVICES"))
        .arg("key")
        .args(hand_written_key(set))
        .output()
        .context("running bpftool")?;
    Ok(output.status.success())
}

/// Programs one data plane attaches: connect, sendmsg, recvmsg and getpeername, v4 and v6.
pub const DATA_PLANE_PROGRAMS: usize = dataplane::PROGRAMS.len();

/// Runs `bpftool` with `args` (to make and pin maps and links the way another tool would).
pub fn bpftool(args: &[&str]) -> Result<()> {
    let output = Command::new("bpftool")
        .args(args)
        .output()
        .context("running bpftool (installed by `make setup`)")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(output.status.success(), "bpftool {args:?}: {stderr}");
    Ok(())
}

/// A file or empty directory a test made, removed when this is dropped (also when the test
/// fails).
pub struct Remove(pub PathBuf);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0).or_else(|_| fs::remove_dir(&self.0));
    }
}

/// Programs attached to `cgroup`, as `bpftool` sees them (an independent check).
pub fn attached_programs(cgroup: &Path) -> Result<usize> {
    let output = Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(cgroup)
        .output()
        .context("running bpftool (installed by `make setup`)")?;
    ensure!(output.status.success(), "bpftool: {}", String::from_utf8_lossy(&output.stderr));
    // One line of header, then one line per attached program.
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text.lines().skip(1).filter(|l| !l.trim().is_empty()).count())
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = Dataplane::uninstall(&self.pin_path);
        // A pin directory a test made that holds no data plane (uninstall refuses those).
        let _ = fs::remove_dir(&self.pin_path);
        self.servers.clear();
        // Probe processes have all been waited for, so the cgroups are empty.
        for client in &self.clients {
            let _ = fs::remove_dir(client);
        }
        let _ = fs::remove_dir(&self.cgroup);
    }
}

struct Server {
    /// The listening TCP or the bound UDP socket.
    socket: OwnedFd,
    /// Its address.
    addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        // On Linux, shutdown() wakes a blocked accept() with an error, and a blocked recv()
        // of a UDP socket with 0 bytes (after ENOTCONN for the call itself).
        // SAFETY: the fd is open for as long as self.
        unsafe { libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RDWR) };
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A client that prints lines and waits on its standard input between steps, so a test can
/// change the data plane while the client's sockets stay open.
pub struct Session {
    child: Running,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Session {
    /// The client's next line of output.
    pub fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut self.stdout, &mut line)?;
        Ok(line.trim().to_owned())
    }

    /// Lets the client go on (a line on its stdin) and reads the next line it prints.
    pub fn go_on(&mut self) -> Result<String> {
        self.child.0.stdin.as_mut().context("the client's stdin")?.write_all(b"\n")?;
        self.line()
    }

    /// Lets the client go on (a line on its stdin); it prints the rest and ends.
    pub fn finish(mut self) -> Result<Vec<String>> {
        self.child.0.stdin.as_mut().context("the client's stdin")?.write_all(b"\n")?;
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest)?;
        ensure!(self.child.0.wait()?.success(), "the client failed");
        Ok(rest.lines().map(str::to_owned).collect())
    }
}

/// A child process of a test, killed by its PID and reaped when dropped (also when the test
/// fails), so nothing it started outlives the test or keeps a sandbox's cgroup busy.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The probe binary, built beside the test binaries.
pub fn probe_path() -> Result<PathBuf> {
    binary("probe")
}

/// The `reconciler` binary. Cargo builds a package's binaries only for that package's own
/// tests, so `make test` runs `cargo build --bins` first.
/// `value` is valid under `schema/plan-output.schema.json` (what `plan --output json`
/// prints).
pub fn assert_plan_output_schema(value: &serde_json::Value) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema/plan-output.schema.json");
    let text = std::fs::read_to_string(&path).expect("schema/plan-output.schema.json");
    let schema: serde_json::Value = serde_json::from_str(&text).expect("the schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let errors: Vec<String> =
        validator.iter_errors(value).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "{errors:#?}\n{value:#}");
}

pub fn reconciler_path() -> Result<PathBuf> {
    binary("reconciler")
}

fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // Integration tests live in target/<profile>/deps; binaries in target/<profile>.
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("no {name} binary next to {}; run `cargo build --bins` (make test does)", exe.display())
}

/// A probe started by [`Sandbox::spawn_probe_until`]; killed by PID if dropped unwaited.
pub struct RunningProbe {
    child: Option<std::process::Child>,
}

impl RunningProbe {
    /// Waits for the probe to end (after its stop file appeared) and parses its tally.
    pub fn wait(mut self) -> Result<ProbeResult> {
        let child = self.child.take().context("probe already collected")?;
        let output = child.wait_with_output()?;
        ensure!(
            output.status.success(),
            "probe failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        ProbeResult::parse(&String::from_utf8_lossy(&output.stdout))
    }
}

impl Drop for RunningProbe {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What one client cgroup's connects reached, from [`Sandbox::connect_from_cgroups`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientReplies {
    /// The cgroup's ID (its directory's inode): what the data plane knows the client by.
    pub cgroup_id: u64,
    /// A backend name per connect, or `error:ERRNO`.
    pub replies: Vec<String>,
}

/// What a probe run saw: replies per backend name and failures per errno name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ProbeResult {
    pub replies: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
}

impl ProbeResult {
    fn parse(text: &str) -> Result<Self> {
        let mut result = ProbeResult::default();
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            let (kind, name, count) = (fields.next(), fields.next(), fields.next());
            let (Some(kind), Some(name), Some(count)) = (kind, name, count) else {
                bail!("bad probe line {line:?}");
            };
            let count: u64 = count.parse()?;
            match kind {
                "reply" => result.replies.insert(name.to_owned(), count),
                "error" => result.errors.insert(name.to_owned(), count),
                _ => bail!("bad probe line {line:?}"),
            };
        }
        Ok(result)
    }

    pub fn total(&self) -> u64 {
        self.replies.values().sum::<u64>() + self.errors.values().sum::<u64>()
    }
}

/// Name of an errno for probe output, e.g. "ECONNREFUSED".
pub fn errno_name(errno: i32) -> String {
    match errno {
        libc::ECONNREFUSED => "ECONNREFUSED".into(),
        libc::ENETUNREACH => "ENETUNREACH".into(),
        libc::EPERM => "EPERM".into(),
        libc::ETIMEDOUT => "ETIMEDOUT".into(),
        libc::ECONNRESET => "ECONNRESET".into(),
        libc::EHOSTUNREACH => "EHOSTUNREACH".into(),
        other => format!("errno{other}"),
    }
}

/// The client side of the test protocol: sends a one-line request, reads the whole reply
/// (the backend's name) until the server closes.
pub fn request(stream: &mut std::net::TcpStream) -> std::io::Result<String> {
    stream.write_all(b"GET\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply.trim().to_owned())
}

/// The server side: reads the request line, answers `name`, closes. Reading first matters:
/// closing with unread data would send a reset instead of a FIN.
pub fn answer(mut stream: std::net::TcpStream, name: &str) -> std::io::Result<()> {
    let mut byte = [0u8; 1];
    for _ in 0..64 {
        if stream.read(&mut byte)? == 0 || byte[0] == b'\n' {
            break;
        }
    }
    stream.write_all(format!("{name}\n").as_bytes())
}

/// [`one_service`] over UDP.
pub fn one_udp_service(frontend: &str, backends: &[&str]) -> Result<MapState> {
    let mut state = one_service(frontend, backends)?;
    state.services = state
        .services
        .into_iter()
        .map(|(mut frontend, entry)| {
            frontend.protocol = Protocol::Udp;
            (frontend, entry)
        })
        .collect();
    Ok(state)
}

/// A desired state with one TCP service `frontend` ("VIP:PORT") whose backends are
/// `backends` ("ADDR:PORT"), each of weight 1, with backend IDs 1, 2, ... in order.
pub fn one_service(frontend: &str, backends: &[&str]) -> Result<MapState> {
    let frontend: SocketAddr = frontend.parse().with_context(|| format!("frontend {frontend}"))?;
    let mut state = MapState::default();
    state.services.insert(
        Frontend { vip: frontend.ip(), port: frontend.port(), protocol: Protocol::Tcp },
        ServiceEntry {
            id: 1,
            slot_count: backends.len() as u32,
            algorithm: Algorithm::Random,
            maglev_client: Client::Cgroup,
            affinity_timeout_secs: 0,
            affinity_client: Client::Cgroup,
        },
    );
    for (index, backend) in backends.iter().enumerate() {
        let addr: SocketAddr = backend.parse().with_context(|| format!("backend {backend}"))?;
        let id = index as u32 + 1;
        state
            .backends
            .insert(id, BackendEntry { addr, service_id: 1, state: BackendState::Active });
        state.slots.insert((1, index as u32), id);
    }
    state.names.insert(1, "test".into());
    Ok(state)
}
