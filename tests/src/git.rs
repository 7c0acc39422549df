//! Real git repositories for tests: working repositories made with the git CLI in temporary
//! directories, bare remotes, and a `git daemon` on 127.0.0.1.
use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tempfile::{tempdir, TempDir};

/// Runs git in `dir` with a fixed identity and without the user's or the system's
/// configuration; returns its trimmed stdout. Panics (failing the test) if git fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .current_dir(dir)
        .args(["-c", "init.defaultBranch=main"])
        .args(args)
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("running git (installed by `make setup`)");
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
    pub port: u16,
}

impl Daemon {
    /// Serves the repositories under `base` at git://127.0.0.1:`port`/, once it accepts
    /// connects.
    pub fn start(base: &Path, port: u16) -> Daemon {
        // The daemon binary itself: `git daemon` runs it as a child of `git`, which a kill of
        // the PID we hold would leave running.
        let exec_path = git(base, &["--exec-path"]);
        let child = Command::new(Path::new(&exec_path).join("git-daemon"))
            .args(["--reuseaddr", "--export-all", "--listen=127.0.0.1"])
            .arg(format!("--base-path={}", base.display()))
            .arg(format!("--port={port}"))
            .arg(base)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Each connect of the readiness probe below makes it complain of a hang-up.
            .stderr(Stdio::null())
            .spawn()
            .expect("starting git daemon");
        let mut daemon = Daemon { child, port };
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
            assert!(daemon.child.try_wait().ok().flatten().is_none(), "git daemon exited");
            assert!(Instant::now() < deadline, "git daemon not listening on {address} after 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
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

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}
