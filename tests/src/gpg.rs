//! Real OpenPGP keys made by `gpg`, each in a GnuPG home of its own: made in the past and
//! expired, revoked (by gpg's own revocation certificate), with signing subkeys, revoked
//! subkeys, or no signing capability left; commits signed with them by `git commit -S`, at a
//! time of the test's choosing; and what `git verify-commit` says of them.
use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use tempfile::{tempdir, TempDir};

use crate::git::{git_command, run_git, Repo};

/// An OpenPGP key for `Test <email>`. The gpg-agent that gpg starts for its home is stopped
/// when this is dropped, also when a test fails.
pub struct Gpg {
    home: TempDir,
    pub fingerprint: String,
}

impl Gpg {
    /// A signing key made now that never expires.
    pub fn new(email: &str) -> Gpg {
        Gpg::made(email, None, "never")
    }

    /// A signing key made at Unix time `made` (or now) that expires at `expires` (`never` or
    /// an ISO date, as `gpg --quick-gen-key` reads it).
    pub fn made(email: &str, made: Option<i64>, expires: &str) -> Gpg {
        let home = tempdir().expect("a GnuPG home");
        let mut gpg = Gpg { home, fingerprint: String::new() };
        let user = format!("Test <{email}>");
        gpg.at(made, &[]);
        gpg.run(&["--passphrase", "", "--quick-gen-key", &user, "ed25519", "sign", expires]);
        gpg.at(None, &[]);
        gpg.fingerprint = gpg.fingerprints().into_iter().next().expect("the new key's fingerprint");
        gpg
    }

    /// The fingerprints of the key and its subkeys, in order.
    fn fingerprints(&self) -> Vec<String> {
        let listing = self.run(&["--with-colons", "--list-keys"]);
        let fields = listing.lines().filter_map(|line| line.strip_prefix("fpr:::::::::"));
        fields.filter_map(|rest| rest.split(':').next()).map(str::to_owned).collect()
    }

    /// Makes gpg in this home believe it is Unix time `time` (or now), with `options` more
    /// in its gpg.conf.
    fn at(&self, time: Option<i64>, options: &[&str]) {
        let mut conf = time.map(|t| format!("faked-system-time {t}\n")).unwrap_or_default();
        conf.extend(options.iter().map(|o| format!("{o}\n")));
        std::fs::write(self.home.path().join("gpg.conf"), conf).expect("writing gpg.conf");
    }

    /// gpg with `args` in this home, in batch mode; its stdout.
    fn run(&self, args: &[&str]) -> String {
        self.run_with_input(args, "")
    }

    /// gpg with `args` in this home, in batch mode, `input` on its stdin; its stdout.
    fn run_with_input(&self, args: &[&str], input: &str) -> String {
        let mut child = Command::new("gpg")
            .arg("--homedir")
            .arg(self.home.path())
            .args(["--batch", "--pinentry-mode", "loopback"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running gpg (make setup installs gnupg)");
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes()).expect("writing to gpg");
        }
        let output = child.wait_with_output().expect("waiting for gpg");
        assert!(
            output.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `gpg --edit-key` of this key with `commands`, one per prompt.
    fn edit(&self, commands: &[&str]) {
        let args = ["--passphrase", "", "--command-fd", "0", "--edit-key", &self.fingerprint];
        self.run_with_input(&args, &(commands.join("\n") + "\n"));
    }

    /// The armored public key, as `gpg --export --armor` writes it.
    pub fn public_key(&self) -> String {
        self.run(&["--armor", "--export", &self.fingerprint])
    }

    /// Commits everything in `repo`, signed with this key (`git commit -S`).
    pub fn commit_signed(&self, repo: &Repo, message: &str) -> String {
        self.commit_signed_by(repo, message, &self.fingerprint, None, &[])
    }

    /// Commits everything in `repo`, signed with `key` (a fingerprint; a subkey's ends in `!`)
    /// at Unix time `at` (the commit's and the signature's) or now, with the gpg `options`.
    pub fn commit_signed_by(
        &self,
        repo: &Repo,
        message: &str,
        key: &str,
        at: Option<i64>,
        options: &[&str],
    ) -> String {
        repo.git(&["add", "-A"]);
        let signing_key = format!("user.signingkey={key}");
        let args = ["-c", &signing_key, "commit", "-q", "--allow-empty", "-S", "-m", message];
        let mut command = git_command(repo.path());
        command.env("GNUPGHOME", self.home.path()).args(args);
        if let Some(at) = at {
            let date = format!("{at} +0000");
            command.env("GIT_AUTHOR_DATE", &date).env("GIT_COMMITTER_DATE", &date);
        }
        self.at(at, options);
        run_git(&mut command, repo.path(), &args);
        self.at(None, &[]);
        repo.git(&["rev-parse", "HEAD"])
    }

    /// Whether `git verify-commit` accepts `repo`'s HEAD with the keys of this home.
    pub fn git_verifies(&self, repo: &Repo) -> bool {
        let mut command = git_command(repo.path());
        command.env("GNUPGHOME", self.home.path()).args(["verify-commit", "HEAD"]);
        command.output().expect("running git verify-commit").status.success()
    }

    /// Revokes the key with the certificate gpg made with it; that certificate, armored (as
    /// gpg keeps it, without the colon that guards it against an accidental import).
    pub fn revoke(&self) -> String {
        let path = self.home.path().join(format!("openpgp-revocs.d/{}.rev", self.fingerprint));
        let kept = std::fs::read_to_string(path).expect("gpg's revocation certificate");
        let certificate = kept.replacen(":-----BEGIN", "-----BEGIN", 1);
        let file = self.home.path().join("revocation.asc");
        std::fs::write(&file, &certificate).expect("writing the certificate");
        self.run(&["--import", &file.display().to_string()]);
        certificate
    }

    /// Adds a signing subkey made at Unix time `made` (or now) that expires at `expires`; its
    /// fingerprint.
    pub fn add_signing_subkey(&self, made: Option<i64>, expires: &str) -> String {
        self.at(made, &[]);
        self.run(&[
            "--passphrase",
            "",
            "--quick-add-key",
            &self.fingerprint,
            "ed25519",
            "sign",
            expires,
        ]);
        self.at(None, &[]);
        self.fingerprints().pop().expect("the new subkey's fingerprint")
    }

    /// Revokes the first subkey (reason: none given).
    pub fn revoke_subkey(&self) {
        self.edit(&["key 1", "revkey", "y", "0", "", "y", "save"]);
    }

    /// Takes signing from the primary key's capabilities (a new self-signature says so).
    pub fn stop_signing(&self) {
        self.edit(&["change-usage", "S", "Q", "save"]);
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(self.home.path())
            .args(["--kill", "gpg-agent"])
            .status();
    }
}
