//! The rules of ARCHITECTURE.md that a reader of the tree can check, checked on the tree:
//! small functions and files, no import circles, one import path per type, typed errors
//! below the command line, named exit codes, few suffixed variants.
//!
//! The source is read as text with a small lexer (`reconciler_tests::source`) that knows
//! Rust's comments, strings and character literals, so a brace in a string does not count.
use std::collections::{BTreeMap, BTreeSet};

use anyhow::{ensure, Result};
use reconciler_tests::source::{crate_files, SourceFile};

/// The crates whose production code the rules hold for.
const CRATES: [&str; 4] = ["reconciler", "reconciler-core", "reconciler-common", "reconciler-ebpf"];
const MAX_FUNCTION_LINES: usize = 80;
const MAX_FILE_LINES: usize = 600;

fn every_file() -> Result<Vec<SourceFile>> {
    let mut files = Vec::new();
    for name in CRATES {
        files.extend(crate_files(name)?);
    }
    Ok(files)
}

#[test]
fn no_production_function_is_over_80_lines() -> Result<()> {
    let mut long = Vec::new();
    for file in every_file()? {
        for function in file.functions() {
            if function.lines > MAX_FUNCTION_LINES {
                long.push(format!(
                    "{}:{} {} ({} lines)",
                    file.path, function.line, function.name, function.lines
                ));
            }
        }
    }
    ensure!(long.is_empty(), "functions over {MAX_FUNCTION_LINES} lines:\n{}", long.join("\n"));
    Ok(())
}

#[test]
fn no_production_file_is_over_600_lines() -> Result<()> {
    let long: Vec<String> = every_file()?
        .iter()
        .filter(|file| file.production_lines() > MAX_FILE_LINES)
        .map(|file| format!("{} ({} lines before its tests)", file.path, file.production_lines()))
        .collect();
    ensure!(long.is_empty(), "files over {MAX_FILE_LINES} lines:\n{}", long.join("\n"));
    Ok(())
}

/// For each crate: modules are nodes, a path a module names (`crate::a::b`, `super::c`) is
/// an edge to the module it lies in. Each edge is seen between the two siblings under the
/// modules' closest common parent (a child naming its own parent's items is no circle: the
/// parent declares it); no sibling may reach itself.
#[test]
fn no_two_modules_import_each_other_directly_or_in_a_circle() -> Result<()> {
    let mut circles = Vec::new();
    for name in CRATES {
        let files = crate_files(name)?;
        let modules: BTreeSet<Vec<String>> = files.iter().map(|f| f.module.clone()).collect();
        let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
        for file in &files {
            for path in file.named_paths() {
                let Some(target) = owning_module(&modules, &path) else { continue };
                if let Some((from, to)) = siblings(&file.module, &target) {
                    edges.entry(from).or_default().insert(to);
                }
            }
        }
        for start in edges.keys() {
            if let Some(circle) = circle_from(&edges, start) {
                let shown: Vec<String> = circle.iter().map(|m| m.join("::")).collect();
                circles.push(format!("{name}: {}", shown.join(" -> ")));
            }
        }
    }
    ensure!(circles.is_empty(), "import circles:\n{}", circles.join("\n"));
    Ok(())
}

/// The longest module of `modules` that `path` starts with.
fn owning_module(modules: &BTreeSet<Vec<String>>, path: &[String]) -> Option<Vec<String>> {
    (0..=path.len()).rev().map(|n| path[..n].to_vec()).find(|prefix| modules.contains(prefix))
}

/// `from` and `to` lifted to the children of their closest common parent; `None` when one
/// contains the other.
fn siblings(from: &[String], to: &[String]) -> Option<(Vec<String>, Vec<String>)> {
    let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
    if common == from.len() || common == to.len() {
        return None;
    }
    Some((from[..=common].to_vec(), to[..=common].to_vec()))
}

/// A path of edges from `start` back to it, if there is one.
fn circle_from(
    edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
    start: &Vec<String>,
) -> Option<Vec<Vec<String>>> {
    let mut stack = vec![vec![start.clone()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = path.last()?;
        for next in edges.get(last).into_iter().flatten() {
            if next == start {
                let mut circle = path.clone();
                circle.push(next.clone());
                return Some(circle);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push(longer);
            }
        }
    }
    None
}

/// `pub use` makes a second path to an item: allowed only for a module's own private
/// submodules (the module's API, the submodule an implementation detail).
#[test]
fn every_type_has_one_import_path() -> Result<()> {
    let mut second_paths = Vec::new();
    for file in every_file()? {
        let private_children = file.private_submodules();
        for path in file.public_reexports() {
            let first = path.first().map(String::as_str).unwrap_or_default();
            if !private_children.contains(first) {
                second_paths.push(format!("{}: pub use {}", file.path, path.join("::")));
            }
        }
    }
    ensure!(second_paths.is_empty(), "re-exports:\n{}", second_paths.join("\n"));
    Ok(())
}

/// The suffixed variants of the old pipeline (`_reusing`, `_with_health`, `_loaded`,
/// `_within`, `_locked`, `_touched`) became options; a few remain where they name a real
/// difference.
#[test]
fn few_public_functions_come_in_suffixed_variants() -> Result<()> {
    const SUFFIXES: [&str; 6] =
        ["_reusing", "_with_health", "_loaded", "_within", "_locked", "_touched"];
    let mut suffixed = Vec::new();
    for file in every_file()? {
        for function in file.functions().into_iter().filter(|f| f.public) {
            if SUFFIXES.iter().any(|suffix| function.name.ends_with(suffix)) {
                suffixed.push(format!("{}:{} {}", file.path, function.line, function.name));
            }
        }
    }
    ensure!(
        suffixed.len() <= 8,
        "{} suffixed public functions:\n{}",
        suffixed.len(),
        suffixed.join("\n")
    );
    Ok(())
}

/// Below the command line (`cli/`, where `anyhow` meets the user), errors are types: no
/// `Result<_, String>`, no catch-all `Invalid(String)` variant.
#[test]
fn errors_below_the_command_line_are_typed() -> Result<()> {
    let mut stringly = Vec::new();
    for file in every_file()?.iter().filter(|f| !f.path.contains("/src/cli/")) {
        for (number, line) in file.production_code_lines() {
            let string_result = line.contains("Result<") && line.contains(", String>");
            if string_result || line.contains("Invalid(String)") {
                stringly.push(format!("{}:{number}: {}", file.path, line.trim()));
            }
        }
    }
    ensure!(stringly.is_empty(), "string errors:\n{}", stringly.join("\n"));
    Ok(())
}

/// Exit codes are documented constants, not numbers scattered through the subcommands.
#[test]
fn exit_codes_are_named() -> Result<()> {
    let mut bare = Vec::new();
    for file in crate_files("reconciler")? {
        for (number, line) in file.production_code_lines() {
            let literal = line.split("ExitCode::from(").nth(1).and_then(|rest| rest.chars().next());
            if literal.is_some_and(|c| c.is_ascii_digit()) {
                bare.push(format!("{}:{number}: {}", file.path, line.trim()));
            }
        }
    }
    ensure!(bare.is_empty(), "bare exit codes:\n{}", bare.join("\n"));
    Ok(())
}
