//! Real git repositories for tests: working repositories made with the git CLI in temporary
//! directories, bare remotes, and a `git daemon` on 127.0.0.1.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use tempfile::{tempdir, TempDir};

/// Runs git in `dir` with a fixed identity and without the user's or the system's
/// configuration; returns its trimmed stdout. Panics (failing the test) if git fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    run_git(git_command(dir).args(args), dir, args)
}

/// git in `dir` with the fixed identity and no configuration of the user's or the system's.
pub(crate) fn git_command(dir: &Path) -> Command {
    let mut command = Command::new("git");
    command
        .current_dir(dir)
        .args(["-c", "init.defaultBranch=main"])
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1");
    command
}

/// Runs `command` (git `args` in `dir`); its trimmed stdout, or a panic saying why not.
pub(crate) fn run_git(command: &mut Command, dir: &Path, args: &[&str]) -> String {
    let output = command.output().expect("running git (installed by `make setup`)");
    assert!(
        output.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A working repository in a temporary directory.
pub struct Repo {
    dir: TempDir,
}

impl Default for Repo {
    fn default() -> Self {
        Self::new()
    }
}

impl Repo {
    pub fn new() -> Repo {
        let dir = tempdir().expect("a temporary directory");
        git(dir.path(), &["init", "-q"]);
        Repo { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self) -> String {
        self.path().display().to_string()
    }

    pub fn git(&self, args: &[&str]) -> String {
        git(self.path(), args)
    }

    pub fn write(&self, file: &str, text: impl AsRef<[u8]>) {
        let path = self.path().join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("creating directories in the repository");
        }
        std::fs::write(path, text).expect("writing a file in the repository");
    }

    /// Commits everything in the working tree; returns the commit id.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }

    /// Commits everything, signed with the SSH private key `key` (`git commit -S` with
    /// `gpg.format=ssh`), as committer test@example.com.
    pub fn commit_signed(&self, message: &str, key: &Path) -> String {
        self.git(&["add", "-A"]);
        let signing_key = format!("user.signingkey={}", key.display());
        let sign = ["-c", "gpg.format=ssh", "-c", &signing_key];
        self.git(&[&sign[..], &["commit", "-q", "--allow-empty", "-S", "-m", message]].concat());
        self.git(&["rev-parse", "HEAD"])
    }

    /// Tags HEAD `name` with an annotated tag signed by the SSH private key `key`.
    pub fn tag_signed(&self, name: &str, key: &Path) {
        let signing_key = format!("user.signingkey={}", key.display());
        self.git(&["-c", "gpg.format=ssh", "-c", &signing_key, "tag", "-s", "-m", name, name]);
    }

    /// A bare clone in `dir/name`, made the `origin` this repository pushes to.
    pub fn bare_clone(&self, dir: &Path, name: &str) -> PathBuf {
        let bare = dir.join(name);
        git(dir, &["clone", "-q", "--bare", &self.url(), name]);
        self.git(&["remote", "add", "origin", &bare.display().to_string()]);
        bare
    }
}

/// A `git daemon` child process, killed (by its PID) when dropped, also when a test fails.
pub struct Daemon {
    child: Child,
    pub address: IpAddr,
}

/// The port `git daemon` serves on, at an address of the test's own.
pub const GIT_PORT: u16 = 9418;

impl Daemon {
    /// Serves the repositories under `base` at git://`address`/ (see [`loopback_address`]),
    /// once it accepts connects.
    pub fn start(base: &Path, address: IpAddr) -> Daemon {
        let reachable =
            |socket| TcpStream::connect_timeout(&socket, Duration::from_millis(200)).is_ok();
        Daemon::start_with(base, address, Command::new, reachable)
    }

    /// [`start`](Self::start), its command made by `command` (another network namespace,
    /// say) and its readiness told by `reachable`.
    pub fn start_with(
        base: &Path,
        address: IpAddr,
        command: impl FnOnce(PathBuf) -> Command,
        reachable: impl Fn(SocketAddr) -> bool,
    ) -> Daemon {
        Daemon::spawn(base, address, command, reachable, false)
    }

    /// [`start_with`](Self::start_with), with `--verbose`: its log (a line per connect and
    /// request, `Request upload-pack for ...` a fetch) is read from [`take_log`](Self::take_log).
    pub fn start_logged(
        base: &Path,
        address: IpAddr,
        command: impl FnOnce(PathBuf) -> Command,
        reachable: impl Fn(SocketAddr) -> bool,
    ) -> Daemon {
        Daemon::spawn(base, address, command, reachable, true)
    }

    /// The log of a daemon started by [`start_logged`](Self::start_logged), once.
    pub fn take_log(&mut self) -> Option<std::process::ChildStderr> {
        self.child.stderr.take()
    }

    fn spawn(
        base: &Path,
        address: IpAddr,
        command: impl FnOnce(PathBuf) -> Command,
        reachable: impl Fn(SocketAddr) -> bool,
        verbose: bool,
    ) -> Daemon {
        // The daemon binary itself: `git daemon` runs it as a child of `git`, which a kill of
        // the PID we hold would leave running.
        let exec_path = git(base, &["--exec-path"]);
        let child = command(Path::new(&exec_path).join("git-daemon"))
            .args(["--reuseaddr", "--export-all"])
            .arg(format!("--listen={address}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(format!("--port={GIT_PORT}"))
            .args(verbose.then_some("--verbose"))
            .arg(base)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Each connect of the readiness probe below makes it complain of a hang-up.
            .stderr(if verbose { Stdio::piped() } else { Stdio::null() })
            .spawn()
            .expect("starting git daemon");
        let mut daemon = Daemon { child, address };
        let socket = SocketAddr::new(address, GIT_PORT);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !reachable(socket) {
            assert!(daemon.child.try_wait().ok().flatten().is_none(), "git daemon exited");
            assert!(Instant::now() < deadline, "git daemon not listening on {socket} after 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    /// Stops (`SIGSTOP`) or resumes (`SIGCONT`) the server: stopped, the kernel still
    /// accepts connections for it, and nobody answers: a git server that hangs.
    pub fn pause(&self, paused: bool) {
        let signal = if paused { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: signalling the PID of a child we started and have not reaped.
        let sent = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(sent, 0, "signalling git daemon: {}", std::io::Error::last_os_error());
    }

    /// The URL of repository `name` (a path under the base).
    pub fn url(&self, name: &str) -> String {
        format!("git://{}:{GIT_PORT}/{name}", self.address)
    }

    pub fn stop(&mut self) {
        // Already gone is fine; waiting reaps it, so its listening socket is closed.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A new ed25519 key pair `dir/name` (and `.pub`), without a passphrase, made by ssh-keygen;
/// returns the private key's path and the public key's line (`ssh-ed25519 AAAA... name`).
pub fn ssh_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .status()
        .expect("running ssh-keygen (make setup installs openssh-client)");
    assert!(status.success(), "ssh-keygen failed");
    let public = std::fs::read_to_string(path.with_extension("pub")).expect("the public key");
    (path, public.trim().to_owned())
}

/// One service, `web`: a VIP, one port, one backend; what the repositories of tests hold.
pub const WEB_SERVICE: &str =
    "apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\n\
    spec:\n  vip: 10.96.0.10\n  ports: [{name: http, port: 80, targetPort: 8080}]\n  \
    backends:\n    - {address: 10.1.0.11}\n";

/// A loopback address of this process's own, another at each call. Servers of concurrent
/// tests listen on fixed ports at addresses of their own, so none races another for a port
/// (as picking a port that was free a moment ago does). All of 127.0.0.0/8 reaches `lo`.
pub fn loopback_address() -> IpAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // Test binaries run one after another; the PID keeps a leftover of another apart.
    let process = (std::process::id() % 200) as u8 + 50;
    IpAddr::V4(Ipv4Addr::new(127, process, (n / 250) as u8, (n % 250) as u8 + 1))
}
