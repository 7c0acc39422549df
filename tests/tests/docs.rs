//! The documentation in `docs/` against what it documents: every field of `schema/*.json`,
//! every subcommand and flag the binary has (from its own `--help`), and every example
//! (a service definition validates, a daemon configuration parses). The metrics the daemon
//! exports are checked against `docs/operations.md` where a real daemon runs
//! (`tests/tests/alerts.rs`).
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use reconciler_core::source::{Snapshot, SourceFile};
use reconciler_tests::{docs, reconciler_path};
use serde_json::Value;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(workspace().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The leaf fields of `node` (an object schema) as dotted paths under `prefix` (`[]` for an
/// array's items); a reference to a definition of `defs` with fields of its own stops the
/// walk (the definition is documented apart), one without (a pattern, say) is a leaf.
fn leaves(
    node: &Value,
    defs: &serde_json::Map<String, Value>,
    prefix: &str,
    out: &mut Vec<String>,
) {
    if let Some(reference) = node.get("$ref").and_then(Value::as_str) {
        let name = reference.rsplit('/').next().unwrap_or_default();
        if defs.get(name).is_some_and(|d| d.get("properties").is_some()) {
            return;
        }
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        for sub in node.get(key).and_then(Value::as_array).into_iter().flatten() {
            leaves(sub, defs, prefix, out);
        }
    }
    if let Some(items) = node.get("items") {
        leaves(items, defs, &format!("{prefix}[]"), out);
    }
    for (name, field) in node.get("properties").and_then(Value::as_object).into_iter().flatten() {
        let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
        let before = out.len();
        leaves(field, defs, &path, out);
        if out.len() == before && !has_fields(field, defs) {
            out.push(path);
        }
    }
}

/// Whether `node` has fields of its own, or is a reference to a definition that has.
fn has_fields(node: &Value, defs: &serde_json::Map<String, Value>) -> bool {
    let reference = node.get("$ref").and_then(Value::as_str).and_then(|r| r.rsplit('/').next());
    let referred = reference.and_then(|name| defs.get(name));
    let items = node.get("items");
    [Some(node), referred, items]
        .into_iter()
        .flatten()
        .any(|n| n.get("properties").is_some_and(|p| p.as_object().is_some_and(|p| !p.is_empty())))
        || ["oneOf", "anyOf"].iter().any(|key| {
            node.get(key)
                .and_then(Value::as_array)
                .is_some_and(|subs| subs.iter().any(|sub| has_fields(sub, defs)))
        })
}

/// The fields of `schema` that `page` does not name (in backticks): those of the root
/// anywhere on the page, those of each definition with fields under a heading that names it.
fn undocumented(schema: &str, page: &str) -> Vec<String> {
    let schema: Value = serde_json::from_str(&read(schema)).unwrap();
    let text = read(page);
    let defs = schema.get("$defs").and_then(Value::as_object).cloned().unwrap_or_default();
    let mut missing = Vec::new();
    let mut root = Vec::new();
    leaves(&schema, &defs, "", &mut root);
    missing.extend(root.into_iter().filter(|path| !text.contains(&format!("`{path}`"))));
    for (name, def) in defs.iter().filter(|(_, d)| d.get("properties").is_some()) {
        let Some(section) = docs::section_naming(&text, name) else {
            missing.push(format!("a section headed `{name}`"));
            continue;
        };
        let mut fields = Vec::new();
        leaves(def, &defs, "", &mut fields);
        let absent = fields.into_iter().filter(|path| !section.contains(&format!("`{path}`")));
        missing.extend(absent.map(|path| format!("{name}: {path}")));
    }
    missing
}

#[test]
fn every_field_of_every_schema_is_documented() {
    for (schema, page) in [
        ("schema/service.schema.json", "docs/definitions.md"),
        ("schema/daemon-config.schema.json", "docs/daemon.md"),
        ("schema/plan-output.schema.json", "docs/cli.md"),
    ] {
        let missing = undocumented(schema, page);
        assert!(
            missing.is_empty(),
            "{page} does not document these fields of {schema}: {missing:?}"
        );
    }
}

/// Whether a table's first cell is a list of names (in backticks) that has `named`.
fn names(cell: &str, named: &str) -> bool {
    cell.starts_with('`') && cell.contains(named)
}

#[test]
fn every_configuration_key_is_in_one_table_row() {
    let schema: Value = serde_json::from_str(&read("schema/daemon-config.schema.json")).unwrap();
    let defs = schema.get("$defs").and_then(Value::as_object).cloned().unwrap_or_default();
    let mut keys = Vec::new();
    leaves(&schema, &defs, "", &mut keys);
    let pages: Vec<String> = std::fs::read_dir(workspace().join("docs"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    let mut wrong = Vec::new();
    for key in keys {
        let named = format!("`{key}`");
        let rows: usize = pages
            .iter()
            .map(|page| docs::table_rows(page).filter(|cells| names(cells[0], &named)).count())
            .sum();
        if rows != 1 {
            wrong.push(format!("{key}: {rows} rows"));
        }
    }
    assert!(wrong.is_empty(), "keys not in exactly one row of one table in docs/: {wrong:?}");
}

/// `reconciler ARGS --help`.
fn help(args: &[&str]) -> String {
    let output =
        Command::new(reconciler_path().unwrap()).args(args).arg("--help").output().unwrap();
    assert!(output.status.success(), "{args:?} --help: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The names listed under `Commands:` in a help text.
fn subcommands(help: &str) -> Vec<String> {
    let listed = help.split("Commands:\n").nth(1).unwrap_or_default();
    let lines = listed.lines().take_while(|l| l.starts_with("  "));
    let names = lines.filter_map(|l| l.split_whitespace().next().map(str::to_owned));
    names.filter(|name| name != "help").collect()
}

/// The long flags in a help text's options (`--name`), `--help` aside: the first of each
/// option's own line (a description may name other flags).
fn flags(help: &str) -> BTreeSet<String> {
    let options = help.split("Options:\n").nth(1).unwrap_or_default();
    let lines = options.lines().filter(|l| l.trim_start().starts_with('-'));
    let first = lines.filter_map(|l| l.split_whitespace().find(|w| w.starts_with("--")));
    first.map(|w| w.trim_end_matches(',').to_owned()).filter(|f| f != "--help").collect()
}

#[test]
fn every_subcommand_and_flag_is_documented() {
    let text = read("docs/cli.md");
    let all = subcommands(&help(&[]));
    assert!(all.len() >= 10, "{all:?}");
    let mut missing = Vec::new();
    for sub in &all {
        if !text.contains(&format!("`reconciler {sub}`")) {
            missing.push(format!("reconciler {sub}"));
        }
        // Each flag has a row of the flags' table that lists the subcommand.
        for flag in flags(&help(&[sub])) {
            let named = [format!("`{flag}`"), format!("`{flag} ")];
            let rows = docs::table_rows(&text)
                .filter(|cells| named.iter().any(|n| cells[0].contains(n.as_str())));
            let listed = rows
                .into_iter()
                .any(|cells| cells.get(1).is_some_and(|c| c.split(", ").any(|s| s == sub)));
            if !listed {
                missing.push(format!("reconciler {sub} {flag}"));
            }
        }
    }
    assert!(missing.is_empty(), "docs/cli.md does not document: {missing:?}");
}

/// The YAML of every ```yaml block of the README and `docs/`, with the file it is in.
fn yaml_examples() -> Vec<(String, String)> {
    let mut pages = vec![PathBuf::from("README.md")];
    let entries = std::fs::read_dir(workspace().join("docs")).unwrap();
    pages.extend(entries.map(|e| Path::new("docs").join(e.unwrap().file_name())));
    let mut blocks = Vec::new();
    for page in pages.iter().filter(|p| p.extension().is_some_and(|e| e == "md")) {
        let name = page.display().to_string();
        let text = read(&name);
        for block in text.split("```yaml\n").skip(1) {
            blocks.push((name.clone(), block.split("```").next().unwrap_or_default().to_owned()));
        }
    }
    blocks
}

#[test]
fn every_example_in_the_docs_is_valid() {
    use reconciler::daemon::config;
    // The files the configuration examples name, here in a directory of the test's.
    let dir = tempfile::tempdir().unwrap();
    let files = docs::example_files(dir.path());
    let (mut services, mut configurations) = (0, 0);
    for (page, yaml) in yaml_examples() {
        if yaml.contains("apiVersion: reconciler.dev/") {
            let snapshot =
                Snapshot { files: vec![SourceFile::new(&page, yaml)], ..Snapshot::default() };
            let result = reconciler_core::validate::validate(&snapshot, &Default::default());
            assert!(result.is_ok(), "{page}: {:?}", result.err());
            services += 1;
        } else if yaml.starts_with("source:") {
            let yaml = files.iter().fold(yaml, |y, (from, to)| y.replace(from, to));
            let parsed = config::parse(&page, &yaml);
            assert!(parsed.is_ok(), "{page}: {:?}", parsed.err());
            if page == "docs/daemon.md" {
                // The reference's example has every part.
                let parsed = parsed.unwrap();
                assert!(parsed.webhook_secret.is_some());
                assert!(parsed.notify.len() == 2 && parsed.notify[1].secret.is_some());
                let verify = parsed.source.verify.expect("source.verify");
                assert!(verify.signers.is_some() && verify.keyring.is_some());
                let gate = parsed.rollout.waits().expect("rollout.gate");
                assert_eq!((parsed.rollout.wave, gate.soak.as_secs()), (2, 600));
            }
            configurations += 1;
        } else {
            panic!(
                "{page}: a YAML example that is neither a definition nor a configuration:\n{yaml}"
            );
        }
    }
    assert!(
        services >= 1 && configurations >= 1,
        "{services} definitions, {configurations} configurations"
    );
    // The package's example configuration (/etc/reconciler/config.example.yaml).
    let example = read("deploy/config.example.yaml");
    assert!(config::parse("config.example.yaml", &example).is_ok());
}

/// The anchor GitHub gives a heading: lower case, spaces to `-`, punctuation dropped.
fn anchor(heading: &str) -> String {
    let text = heading.trim_start_matches('#').trim().to_lowercase();
    let kept = text.chars().filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_');
    kept.map(|c| if c == ' ' { '-' } else { c }).collect()
}

#[test]
fn every_link_between_pages_leads_somewhere() {
    let mut pages = vec![PathBuf::from("README.md"), PathBuf::from("ARCHITECTURE.md")];
    let entries = std::fs::read_dir(workspace().join("docs")).unwrap();
    pages.extend(entries.map(|e| Path::new("docs").join(e.unwrap().file_name())));
    let mut broken = Vec::new();
    for page in &pages {
        let text = read(&page.display().to_string());
        for link in text.split("](").skip(1).filter_map(|rest| rest.split(')').next()) {
            if link.contains("://") || link.starts_with('#') && link.len() < 2 {
                continue;
            }
            let (file, fragment) = link.split_once('#').unwrap_or((link, ""));
            let target =
                if file.is_empty() { page.clone() } else { page.parent().unwrap().join(file) };
            let Ok(target_text) = std::fs::read_to_string(workspace().join(&target)) else {
                broken.push(format!("{}: {link}", page.display()));
                continue;
            };
            let headings = target_text.lines().filter(|l| l.starts_with('#')).map(anchor);
            if !fragment.is_empty() && !headings.collect::<Vec<_>>().contains(&fragment.to_owned())
            {
                broken.push(format!("{}: {link}", page.display()));
            }
        }
    }
    assert!(broken.is_empty(), "links that lead nowhere: {broken:?}");
}
