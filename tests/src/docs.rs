//! What the tests of the documentation share: the section of a page about something, the
//! files its configuration examples name, and the metrics `docs/operations.md` lists.
use std::path::Path;

/// The section of `text` (Markdown) under the first heading that names `name` in backticks,
/// up to the next heading of its level or above.
pub fn section_naming<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let named = format!("`{name}`");
    let mut at = 0;
    let mut start = None;
    for line in text.split_inclusive('\n') {
        let level = line.chars().take_while(|c| *c == '#').count();
        if level > 0 && line[level..].starts_with(' ') {
            if let Some((from, of)) = start {
                if level <= of {
                    return Some(&text[from..at]);
                }
            } else if line.contains(&named) {
                start = Some((at, level));
            }
        }
        at += line.len();
    }
    start.map(|(from, _)| &text[from..])
}

/// The files the documentation's configuration examples name, made in `dir` (a secret, SSH
/// allowed signers, an OpenPGP keyring): each path as written, and the one to put instead.
pub fn example_files(dir: &Path) -> Vec<(String, String)> {
    let secret = dir.join("secret");
    std::fs::write(&secret, "s3cret\n").expect("writing the secret");
    let signers = dir.join("allowed_signers");
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHtVL3aGbtKb5fzRqqYhUqnIu4wYUbYUo/c6pH2oVD+G";
    std::fs::write(&signers, format!("alice@example.com {key}\n")).expect("writing the signers");
    let keyring = dir.join("keyring.asc");
    let gpg = crate::gpg::Gpg::new("alice@example.com");
    std::fs::write(&keyring, gpg.public_key()).expect("writing the keyring");
    let secret = secret.display().to_string();
    vec![
        ("/etc/reconciler/webhook-secret".into(), secret.clone()),
        ("/etc/reconciler/notify-secret".into(), secret),
        ("/etc/reconciler/allowed_signers".into(), signers.display().to_string()),
        ("/etc/reconciler/keyring.asc".into(), keyring.display().to_string()),
    ]
}

/// The metric families of a `/metrics` page (its `# TYPE` lines) that the metrics table of
/// `docs/operations.md` does not list: a counter by its `_total` name, `process_*` as one.
pub fn undocumented_metrics(page: &str) -> Vec<String> {
    let docs = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md"),
    )
    .expect("reading docs/operations.md");
    let table = section_naming_plain(&docs, "## Metrics").unwrap_or_default();
    let mut missing = Vec::new();
    for line in page.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let mut words = line.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else { continue };
        let shown = match kind {
            "counter" if !name.ends_with("_total") => format!("{name}_total"),
            _ => name.to_owned(),
        };
        let listed = table.contains(&format!("`{shown}`"))
            || (shown.starts_with("process_") && table.contains("`process_*`"));
        if !listed {
            missing.push(shown);
        }
    }
    missing
}

/// The section of `text` that starts at the heading line starting `heading`.
fn section_naming_plain<'a>(text: &'a str, heading: &str) -> Option<&'a str> {
    let from = text.find(&format!("\n{heading}"))? + 1;
    let rest = &text[from..];
    let end = rest[1..].find("\n## ").map_or(rest.len(), |e| e + 2);
    Some(&rest[..end])
}
