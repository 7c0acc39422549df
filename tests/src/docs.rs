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

/// The metric families of a `/metrics` page (its `# TYPE` lines) that are not in exactly one
/// table row of `docs/` (the metrics table of `docs/operations.md`, by the first cell): a
/// counter by its `_total` name, `process_*` as one.
pub fn undocumented_metrics(page: &str) -> Vec<String> {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let pages: Vec<String> = std::fs::read_dir(&docs)
        .expect("reading docs/")
        .map(|e| std::fs::read_to_string(e.expect("a page").path()).expect("reading a page"))
        .collect();
    let first_cells: Vec<&str> = pages
        .iter()
        .flat_map(|page| table_rows(page).map(|cells| cells[0]))
        .filter(|cell| cell.starts_with('`'))
        .collect();
    let rows = |name: &str| first_cells.iter().filter(|c| c.contains(&format!("`{name}`"))).count();
    let mut wrong = Vec::new();
    for line in page.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let mut words = line.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else { continue };
        let shown = match kind {
            "counter" if !name.ends_with("_total") => format!("{name}_total"),
            _ => name.to_owned(),
        };
        let count = if shown.starts_with("process_") { rows("process_*") } else { rows(&shown) };
        if count != 1 {
            wrong.push(format!("{shown} ({count} rows)"));
        }
    }
    wrong.sort();
    wrong.dedup();
    wrong
}

/// The rows of every Markdown table in `text`, each as its cells (trimmed; the header and
/// separator rows too).
pub fn table_rows(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines().filter(|l| l.starts_with("| ")).map(|row| {
        let inner = row.trim().trim_start_matches('|').trim_end_matches('|');
        // `\|` inside a cell is a bar of its text, not a border.
        let mut cells = Vec::new();
        let mut start = 0;
        let bytes = inner.as_bytes();
        for (i, b) in bytes.iter().enumerate() {
            if *b == b'|' && (i == 0 || bytes[i - 1] != b'\\') {
                cells.push(inner[start..i].trim());
                start = i + 1;
            }
        }
        cells.push(inner[start..].trim());
        cells
    })
}
