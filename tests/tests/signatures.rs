//! Signed commits, as `plan --allowed-signers`/`--keyring` checks them, on real repositories
//! signed by `ssh-keygen` and `gpg` keys: who may sign, when, with which key; what is refused,
//! saying why; and that OpenPGP keys are held to what `git verify-commit` holds them to
//! (revoked and expired keys and subkeys, keys that may not sign).
use std::{
    path::PathBuf,
    process::{Command, Output},
};

use reconciler_tests::{
    git::{ssh_key, Repo, WEB_SERVICE},
    gpg::Gpg,
    reconciler_path,
};
use tempfile::TempDir;

/// A repository whose services/ holds one service, and key pairs `alice` and `mallory`.
struct Signers {
    repo: Repo,
    keys: TempDir,
    alice: (PathBuf, String),
    mallory: (PathBuf, String),
}

impl Signers {
    fn new() -> Signers {
        let keys = tempfile::tempdir().unwrap();
        let alice = ssh_key(keys.path(), "alice");
        let mallory = ssh_key(keys.path(), "mallory");
        let repo = Repo::new();
        repo.write("services/web.yaml", WEB_SERVICE);
        Signers { repo, keys, alice, mallory }
    }

    /// An allowed-signers file of `lines`; its path.
    fn allowed(&self, lines: &[String]) -> String {
        let path = self.keys.path().join("allowed_signers");
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path.display().to_string()
    }

    /// A keyring file of `text`; its path.
    fn keyring(&self, text: &str) -> String {
        let path = self.keys.path().join("keyring.asc");
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    /// `plan` of the repository with the keyring `text` (and alice's SSH key allowed).
    fn plan_with_keyring(&self, text: &str) -> Output {
        let keyring = self.keyring(text);
        self.plan(
            &self.allowed(&[format!("test@example.com {}", self.alice.1)]),
            &["--keyring", &keyring],
        )
    }

    /// `plan` of the repository's `reference` with `--allowed-signers FILE` and `extra`.
    fn plan(&self, allowed: &str, extra: &[&str]) -> Output {
        let cache = tempfile::tempdir().unwrap();
        let (url, cache) = (self.repo.url(), cache.path().display().to_string());
        let args = [
            "plan",
            "--repo",
            &url,
            "--path",
            "services",
            "--cache-dir",
            &cache,
            "--pin-path",
            "/sys/fs/bpf/reconciler-test-no-such-install",
            "--allowed-signers",
            allowed,
        ];
        let binary = reconciler_path().unwrap();
        Command::new(binary).args([&args[..], extra].concat()).output().unwrap()
    }
}

fn refused_because(output: &Output, why: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is not verified: ") && stderr.contains(why), "{why}: {stderr}");
}

#[test]
fn signed_commits_pass_and_every_other_commit_is_refused_saying_why() {
    let s = Signers::new();
    let alice = &s.alice.1;
    let mallory = &s.mallory.1;
    let only_alice = s.allowed(&[format!("test@example.com namespaces=\"git\" {alice}")]);

    s.repo.commit("unsigned");
    refused_because(&s.plan(&only_alice, &[]), "it is not signed");

    let signed = s.repo.commit_signed("signed by alice", &s.alice.0);
    let output = s.plan(&only_alice, &["--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(plan["revision"], signed.as_str());

    // The key is not listed at all; listed for another principal; not for git; expired
    // before the commit; not yet valid.
    let cases = [
        (vec![format!("test@example.com {mallory}")], "which the allowed signers do not list"),
        (
            vec![format!("someone@example.com {alice}")],
            "for other principals than its committer test@example.com",
        ),
        (
            vec![format!("test@example.com namespaces=\"file\" {alice}")],
            "do not allow in namespace `git`",
        ),
        (
            vec![format!("test@example.com valid-before=20200101Z {alice}")],
            "outside the key's validity",
        ),
        (
            vec![format!("test@example.com valid-after=29990101Z {alice}")],
            "outside the key's validity",
        ),
    ];
    for (lines, why) in cases {
        refused_because(&s.plan(&s.allowed(&lines), &[]), why);
    }
    // A wildcard principal and a window around now pass.
    let window = s.allowed(&[format!(
        "*@example.com,!mallory@example.com valid-after=20200101Z,valid-before=29990101Z {alice}"
    )]);
    assert_eq!(s.plan(&window, &[]).status.code(), Some(0));

    // Alice's signature copied onto other content.
    let raw = s.repo.git(&["cat-file", "commit", &signed]) + "\n";
    let forged_file = s.keys.path().join("forged");
    std::fs::write(&forged_file, raw.replace("signed by alice", "signed by alice, honest"))
        .unwrap();
    let forged_path = forged_file.display().to_string();
    let forged = s.repo.git(&["hash-object", "-t", "commit", "-w", &forged_path]);
    s.repo.git(&["update-ref", "refs/heads/main", &forged]);
    refused_because(&s.plan(&only_alice, &[]), "does not match its content");
    s.repo.git(&["update-ref", "refs/heads/main", &signed]);

    // Signed by mallory, whom the file does not list.
    s.repo.write("services/web.yaml", WEB_SERVICE.replace("10.1.0.11", "10.1.0.66"));
    s.repo.commit_signed("signed by mallory", &s.mallory.0);
    refused_because(&s.plan(&only_alice, &[]), "which the allowed signers do not list");
}

/// A signature block over 64 KiB is refused unparsed, and a commit object over 1 MiB unread
/// (before any check: `Cache::peel` refuses it as it resolves the ref, signed or not): a
/// pushed commit with a huge `gpgsig` header costs a check nothing.
#[test]
fn huge_signatures_are_refused_before_they_are_parsed() {
    let s = Signers::new();
    let alice = &s.alice.1;
    let only_alice = s.allowed(&[format!("test@example.com namespaces=\"git\" {alice}")]);
    let signed = s.repo.commit_signed("signed by alice", &s.alice.0);
    let raw = s.repo.git(&["cat-file", "commit", &signed]) + "\n";
    // The signature's armor, padded: each continuation line of a header starts with a space.
    let (head, rest) = raw.split_once("-----END SSH SIGNATURE-----").unwrap();
    for lines in [1_500, 20_000] {
        let padding = " AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n"
            .repeat(lines);
        let huge = format!("{head}{padding} -----END SSH SIGNATURE-----{rest}");
        let file = s.keys.path().join("huge");
        std::fs::write(&file, huge).unwrap();
        let object =
            s.repo.git(&["hash-object", "-t", "commit", "-w", &file.display().to_string()]);
        s.repo.git(&["update-ref", "refs/heads/main", &object]);
        let output = s.plan(&only_alice, &[]);
        if lines == 1_500 {
            refused_because(&output, "its signature is");
            continue;
        }
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        let expected = format!("{object}: the commit object is ");
        assert!(
            stderr.contains(&expected) && stderr.contains("at most 1048576 are read"),
            "{stderr}"
        );
    }
}

#[test]
fn in_tag_mode_a_signed_tag_must_point_at_the_commit() {
    let s = Signers::new();
    let only_alice = s.allowed(&[format!("test@example.com {}", s.alice.1)]);
    s.repo.commit("unsigned, to be tagged");
    let tag_mode = ["--verify-mode", "tag"];
    refused_because(&s.plan(&only_alice, &tag_mode), "no annotated tag points at it");
    s.repo.tag_signed("v1-by-mallory", &s.mallory.0);
    refused_because(&s.plan(&only_alice, &tag_mode), "which the allowed signers do not list");
    s.repo.tag_signed("v1", &s.alice.0);
    let output = s.plan(&only_alice, &tag_mode);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    // The commit itself is unsigned: head mode refuses it.
    refused_because(&s.plan(&only_alice, &[]), "it is not signed");
}

#[test]
fn openpgp_signed_commits_are_checked_against_the_keyring() {
    let s = Signers::new();
    let ours = Gpg::new("test@example.com");
    let theirs = Gpg::new("test@example.com");
    let stranger = Gpg::new("someone@example.com");
    let keyring = s.keys.path().join("keyring.asc");
    std::fs::write(&keyring, ours.public_key() + &stranger.public_key()).unwrap();
    let keyring = keyring.display().to_string();
    let plan =
        |extra: &[&str]| s.plan(&s.allowed(&[format!("test@example.com {}", s.alice.1)]), extra);
    let with_keyring = ["--keyring", keyring.as_str()];

    let signed = ours.commit_signed(&s.repo, "signed with our OpenPGP key");
    let output = plan(&[&with_keyring[..], &["--output", "json"]].concat());
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let planned: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(planned["revision"], signed.as_str());
    // Only the allowed-signers file given: an OpenPGP signature has nothing to check it.
    refused_because(&plan(&[]), "no keyring is given to check it");

    theirs.commit_signed(&s.repo, "signed by a key the keyring does not hold");
    refused_because(&plan(&with_keyring), "which the keyring does not hold");
    stranger.commit_signed(&s.repo, "signed by a key held for another email");
    refused_because(
        &plan(&with_keyring),
        "none of whose user IDs is its committer test@example.com",
    );
}

fn planned(output: &Output) {
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
}

/// 2019-01-01, when the keys made in the past are made.
const MADE: i64 = 1_546_300_800;
/// 2020-06-01, when they sign: before they expire on 2021-01-01.
const SIGNED: i64 = 1_590_969_600;

#[test]
fn revoked_openpgp_keys_and_subkeys_vouch_for_nothing() {
    let s = Signers::new();
    let key = Gpg::new("test@example.com");
    key.commit_signed(&s.repo, "signed, then revoked");
    let before = key.public_key();
    planned(&s.plan_with_keyring(&before));
    // Revoked by gpg's certificate beside the key in the keyring, or within its block.
    let certificate = key.revoke();
    refused_because(&s.plan_with_keyring(&(before + &certificate)), "which is revoked");
    refused_because(&s.plan_with_keyring(&key.public_key()), "which is revoked");
    assert!(!key.git_verifies(&s.repo), "git verify-commit accepts a revoked key");

    // A signing subkey vouches; revoked, it does not, and its primary key does not stand in.
    let key = Gpg::new("test@example.com");
    let subkey = key.add_signing_subkey(None, "never");
    key.commit_signed_by(&s.repo, "signed by a subkey", &format!("{subkey}!"), None, &[]);
    planned(&s.plan_with_keyring(&key.public_key()));
    key.revoke_subkey();
    let why = format!("OpenPGP key {subkey}, which is revoked");
    refused_because(&s.plan_with_keyring(&key.public_key()), &why);
    assert!(!key.git_verifies(&s.repo), "git verify-commit accepts a revoked subkey");
}

/// As git (gpg's EXPKEYSIG): a key that expired since vouches for nothing, not even what it
/// signed while valid, since the signer chooses the time a signature claims.
#[test]
fn expired_openpgp_keys_subkeys_and_signatures_vouch_for_nothing() {
    let s = Signers::new();
    let key = Gpg::made("test@example.com", Some(MADE), "2021-01-01");
    key.commit_signed_by(&s.repo, "signed in 2020", &key.fingerprint.clone(), Some(SIGNED), &[]);
    refused_because(&s.plan_with_keyring(&key.public_key()), "which expired at 2021-01-01");
    assert!(!key.git_verifies(&s.repo), "git verify-commit accepts an expired key");

    let key = Gpg::made("test@example.com", Some(MADE), "never");
    let subkey = key.add_signing_subkey(Some(MADE), "2021-01-01");
    key.commit_signed_by(
        &s.repo,
        "signed by a subkey in 2020",
        &format!("{subkey}!"),
        Some(SIGNED),
        &[],
    );
    let why = format!("OpenPGP key {subkey}, which expired at 2021-01-01");
    refused_because(&s.plan_with_keyring(&key.public_key()), &why);
    assert!(!key.git_verifies(&s.repo), "git verify-commit accepts an expired subkey");

    // A valid key's signature that was to expire a day after it was made.
    let key = Gpg::made("test@example.com", Some(MADE), "never");
    let fingerprint = key.fingerprint.clone();
    key.commit_signed_by(
        &s.repo,
        "a signature for a day",
        &fingerprint,
        Some(SIGNED),
        &["default-sig-expire 1d"],
    );
    refused_because(&s.plan_with_keyring(&key.public_key()), "the signature expired at 2020-06-02");
    assert!(!key.git_verifies(&s.repo), "git verify-commit accepts an expired signature");

    // A key made after the time its signature claims (gpg signs so only when told to).
    let key = Gpg::new("test@example.com");
    let fingerprint = key.fingerprint.clone();
    let options = ["ignore-time-conflict"];
    key.commit_signed_by(&s.repo, "dated before the key", &fingerprint, Some(SIGNED), &options);
    refused_because(
        &s.plan_with_keyring(&key.public_key()),
        "after the signature's time 2020-06-01",
    );
    assert!(!key.git_verifies(&s.repo), "git verify-commit accepts a key newer than its signature");
}

#[test]
fn an_openpgp_key_that_may_not_sign_vouches_for_nothing() {
    let s = Signers::new();
    let key = Gpg::new("test@example.com");
    key.commit_signed(&s.repo, "signed, then the key's usage changed");
    planned(&s.plan_with_keyring(&key.public_key()));
    key.stop_signing();
    refused_because(&s.plan_with_keyring(&key.public_key()), "which may not sign");
}

/// Emails are compared exactly for both kinds, as ssh-keygen compares principals.
#[test]
fn signer_emails_are_compared_exactly_for_ssh_and_openpgp() {
    let s = Signers::new();
    let key = Gpg::new("Test@Example.com");
    key.commit_signed(&s.repo, "signed by Test@Example.com as test@example.com");
    let why = "none of whose user IDs is its committer test@example.com";
    refused_because(&s.plan_with_keyring(&key.public_key()), why);

    s.repo.commit_signed("signed by alice", &s.alice.0);
    let capitalised = s.allowed(&[format!("Test@Example.com {}", s.alice.1)]);
    refused_because(
        &s.plan(&capitalised, &[]),
        "other principals than its committer test@example.com",
    );
}
