//! The project's Rust sources read as text, for the architecture tests: which module a file
//! is, its functions and their lengths, the paths it names, what it re-exports.
//!
//! A small lexer blanks comments and the insides of string and character literals first
//! (keeping the lines), so that what is left is code: a brace or `fn` in a string or a doc
//! comment does not count. No parser crate: these few questions need none.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

/// One source file of a crate.
pub struct SourceFile {
    /// Relative to the workspace root, for messages.
    pub path: String,
    /// The module path from the crate root (`["daemon", "health"]`; `[]` for the root).
    pub module: Vec<String>,
    /// The text with comments and literals blanked.
    code: Vec<String>,
    /// How many lines come before the tests module.
    production: usize,
}

/// A function item.
pub struct Function {
    pub name: String,
    /// 1-based line of its `fn`.
    pub line: usize,
    /// From its `fn` line to its closing brace.
    pub lines: usize,
    /// `pub`, in any of its forms.
    pub public: bool,
}

/// Every `.rs` file under `CRATE/src` of the workspace.
pub fn crate_files(name: &str) -> Result<Vec<SourceFile>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let src = root.join(name).join("src");
    let mut paths = Vec::new();
    collect(&src, &mut paths)?;
    paths.sort();
    paths
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let relative = path.strip_prefix(&src).unwrap_or(path);
            Ok(SourceFile::new(format!("{name}/src/{}", relative.display()), relative, &text))
        })
        .collect()
}

fn collect(dir: &Path, paths: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, paths)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            paths.push(path);
        }
    }
    Ok(())
}

impl SourceFile {
    fn new(path: String, relative: &Path, text: &str) -> SourceFile {
        let mut module: Vec<String> = relative
            .with_extension("")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if matches!(module.last().map(String::as_str), Some("mod" | "lib" | "main")) {
            module.pop();
        }
        let code: Vec<String> = blank(text).lines().map(str::to_owned).collect();
        let production = tests_start(&code).unwrap_or(code.len());
        SourceFile { path, module, code, production }
    }

    /// Lines before the tests module (`#[cfg(test)]` at the start of a line, then `mod`).
    pub fn production_lines(&self) -> usize {
        self.production
    }

    /// The production lines' code, numbered from 1.
    pub fn production_code_lines(&self) -> impl Iterator<Item = (usize, &str)> {
        self.code[..self.production].iter().enumerate().map(|(i, line)| (i + 1, line.as_str()))
    }

    /// The production code's functions, nested ones too.
    pub fn functions(&self) -> Vec<Function> {
        let lines = &self.code[..self.production];
        let mut functions = Vec::new();
        for (index, line) in lines.iter().enumerate() {
            let Some((name, public)) = function_head(line) else { continue };
            if let Some(end) = body_end(lines, index) {
                functions.push(Function { name, line: index + 1, lines: end - index + 1, public });
            }
        }
        functions
    }

    /// The names of the submodules this file declares without `pub`.
    pub fn private_submodules(&self) -> BTreeSet<String> {
        self.production_code_lines()
            .filter_map(|(_, line)| line.trim().strip_prefix("mod "))
            .map(|rest| rest.trim_end_matches(';').trim().to_owned())
            .collect()
    }

    /// The paths of the production code's `pub use` items, as written.
    pub fn public_reexports(&self) -> Vec<Vec<String>> {
        self.use_items()
            .into_iter()
            .filter(|(public, _)| *public)
            .flat_map(|(_, tree)| expand(&tree))
            .collect()
    }

    /// Every module-relative path the production code names (`use` items, and `crate::`,
    /// `super::` and `self::` paths in code), made absolute from the crate root; paths into
    /// other crates are left out.
    pub fn named_paths(&self) -> Vec<Vec<String>> {
        let children = self.private_submodules();
        let declared: BTreeSet<String> =
            children.into_iter().chain(self.public_submodules()).collect();
        let mut paths: Vec<Vec<String>> = Vec::new();
        for (_, tree) in self.use_items() {
            paths.extend(expand(&tree));
        }
        let code = self.code[..self.production].join("\n");
        for start in ["crate::", "super::", "self::"] {
            for (at, _) in code.match_indices(start) {
                let before = code[..at].chars().next_back();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                paths.push(segments(&code[at..]));
            }
        }
        paths.into_iter().filter_map(|path| self.absolute(&path, &declared)).collect()
    }

    fn public_submodules(&self) -> BTreeSet<String> {
        self.production_code_lines()
            .filter_map(|(_, line)| {
                let rest = line.trim().strip_prefix("pub")?;
                let rest = rest.split_once("mod ")?.1;
                Some(rest.trim_end_matches(';').trim().to_owned())
            })
            .collect()
    }

    /// `path` from the crate root, if it is in this crate.
    fn absolute(&self, path: &[String], declared: &BTreeSet<String>) -> Option<Vec<String>> {
        let first = path.first()?;
        match first.as_str() {
            "crate" => Some(path[1..].to_vec()),
            "self" => Some([self.module.clone(), path[1..].to_vec()].concat()),
            "super" => {
                let supers = path.iter().take_while(|s| *s == "super").count();
                let base = self.module.len().checked_sub(supers)?;
                Some([self.module[..base].to_vec(), path[supers..].to_vec()].concat())
            }
            name if declared.contains(name) => Some([self.module.clone(), path.to_vec()].concat()),
            _ => None,
        }
    }

    /// The production code's `use` items: whether each is public, and its tree as written.
    fn use_items(&self) -> Vec<(bool, String)> {
        let code = self.code[..self.production].join("\n");
        let mut items = Vec::new();
        let mut rest = code.as_str();
        while let Some(at) = find_use(rest) {
            let (before, after) = rest.split_at(at);
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let public = before[line_start..].trim_start().starts_with("pub");
            let end = after.find(';').unwrap_or(after.len());
            items.push((public, after["use ".len()..end].to_owned()));
            rest = &after[end..];
        }
        items
    }
}

/// The offset of the next `use ` that starts an item (after white space or `pub ...`).
fn find_use(code: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(found) = code[from..].find("use ") {
        let at = from + found;
        let line_start = code[..at].rfind('\n').map_or(0, |i| i + 1);
        let head = code[line_start..at].trim();
        if head.is_empty() || head.starts_with("pub") {
            return Some(at);
        }
        from = at + 4;
    }
    None
}

/// The paths of a use tree (`a::{b, c::{d, e as f}, g::*}` -> `a::b`, `a::c::d`, ...).
fn expand(tree: &str) -> Vec<Vec<String>> {
    let tree = without_renames(tree);
    let mut paths = Vec::new();
    expand_into(&tree, &[], &mut paths);
    paths
}

/// `tree` without white space and without its renames (`e as f`: `e`).
fn without_renames(tree: &str) -> String {
    let mut out = String::new();
    let mut tokens = tree.split_whitespace();
    while let Some(token) = tokens.next() {
        if token == "as" {
            // The new name, and whatever punctuation is stuck to it.
            let renamed = tokens.next().unwrap_or_default();
            out.extend(renamed.chars().filter(|c| !(c.is_alphanumeric() || *c == '_')));
        } else {
            out.push_str(token);
        }
    }
    out
}

fn expand_into(tree: &str, prefix: &[String], paths: &mut Vec<Vec<String>>) {
    let Some(open) = tree.find('{') else {
        let mut full = prefix.to_vec();
        let segments = tree.split("::").filter(|s| !s.is_empty() && *s != "*" && *s != "self");
        full.extend(segments.map(str::to_owned));
        paths.push(full);
        return;
    };
    let mut full = prefix.to_vec();
    full.extend(tree[..open].split("::").filter(|s| !s.is_empty()).map(str::to_owned));
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    for part in split_top_level(inner) {
        expand_into(part, &full, paths);
    }
}

/// `inner` split at the commas outside braces.
fn split_top_level(inner: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

/// The `::`-separated identifiers at the start of `code`.
fn segments(code: &str) -> Vec<String> {
    let mut segments = Vec::new();
    let mut rest = code;
    loop {
        let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        segments.push(rest[..end].to_owned());
        match rest[end..].strip_prefix("::") {
            Some(next) => rest = next,
            None => break,
        }
    }
    segments
}

/// The name of the function a line starts, and whether it is public.
fn function_head(line: &str) -> Option<(String, bool)> {
    let mut rest = line.trim_start();
    let public = rest.starts_with("pub ") || rest.starts_with("pub(");
    if public {
        rest = rest.strip_prefix("pub")?;
        if rest.starts_with('(') {
            rest = &rest[rest.find(')')? + 1..];
        }
        rest = rest.trim_start();
    }
    for qualifier in ["const ", "async ", "unsafe ", "extern \"\" "] {
        rest = rest.strip_prefix(qualifier).unwrap_or(rest).trim_start();
    }
    let rest = rest.strip_prefix("fn ")?;
    let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_'))?;
    Some((rest[..end].to_owned(), public))
}

/// The index of the line that closes the body of the function whose head is at `start`;
/// `None` for a declaration without a body.
fn body_end(lines: &[String], start: usize) -> Option<usize> {
    let (mut depth, mut brackets, mut opened) = (0i32, 0i32, false);
    for (index, line) in lines.iter().enumerate().skip(start) {
        for c in line.chars() {
            match c {
                '(' | '[' => brackets += 1,
                ')' | ']' => brackets -= 1,
                ';' if !opened && brackets == 0 => return None,
                '{' => {
                    depth += 1;
                    opened = true;
                }
                '}' => {
                    depth -= 1;
                    if opened && depth == 0 {
                        return Some(index);
                    }
                }
                _ => {}
            }
        }
    }
    None
}

/// The line where the tests module starts: `#[cfg(test)]` at the start of a line, with a
/// `mod` item next.
fn tests_start(code: &[String]) -> Option<usize> {
    code.iter().enumerate().position(|(i, line)| {
        line.starts_with("#[cfg(test)]")
            && code[i + 1..]
                .iter()
                .find(|l| !l.trim().is_empty())
                .is_some_and(|l| l.trim_start().starts_with("mod "))
    })
}

/// `text` with comments and the insides of string and character literals blanked (spaces),
/// lines kept.
fn blank(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let skipped = match (c, next) {
            ('/', Some('/')) => line_comment(&chars, i),
            ('/', Some('*')) => block_comment(&chars, i),
            ('"', _) => string(&chars, i + 1),
            ('r', Some('"' | '#')) if starts_word(&chars, i) => raw_string(&chars, i + 1),
            ('b', Some('"')) if starts_word(&chars, i) => string(&chars, i + 2),
            ('\'', _) => char_literal(&chars, i),
            _ => None,
        };
        match skipped {
            Some((end, keep_quotes)) => {
                for (k, &ch) in chars[i..end].iter().enumerate() {
                    let edge = k < keep_quotes || k + keep_quotes >= end - i;
                    out.push(if ch == '\n' || edge { ch } else { ' ' });
                }
                i = end;
            }
            None => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

fn starts_word(chars: &[char], i: usize) -> bool {
    i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// Each of these returns where the comment or literal at `i` ends, and how many of its
/// characters to keep at each side (a literal's quotes).
fn line_comment(chars: &[char], i: usize) -> Option<(usize, usize)> {
    let end = chars[i..].iter().position(|&c| c == '\n').map_or(chars.len(), |p| i + p);
    Some((end, 0))
}

fn block_comment(chars: &[char], i: usize) -> Option<(usize, usize)> {
    let (mut depth, mut j) = (0, i);
    while j + 1 < chars.len() {
        match (chars[j], chars[j + 1]) {
            ('/', '*') => {
                depth += 1;
                j += 2;
            }
            ('*', '/') => {
                depth -= 1;
                j += 2;
                if depth == 0 {
                    return Some((j, 0));
                }
            }
            _ => j += 1,
        }
    }
    Some((chars.len(), 0))
}

/// A string whose contents start at `from` (after its opening quote).
fn string(chars: &[char], from: usize) -> Option<(usize, usize)> {
    let mut j = from;
    while j < chars.len() {
        match chars[j] {
            '\\' => j += 2,
            '"' => return Some((j + 1, 1)),
            _ => j += 1,
        }
    }
    Some((chars.len(), 1))
}

/// `r"..."` or `r#"..."#` with its `r` at `from - 1`.
fn raw_string(chars: &[char], from: usize) -> Option<(usize, usize)> {
    let hashes = chars[from..].iter().take_while(|&&c| c == '#').count();
    if chars.get(from + hashes) != Some(&'"') {
        return None;
    }
    let mut j = from + hashes + 1;
    while j < chars.len() {
        if chars[j] == '"'
            && chars[j + 1..].iter().take(hashes).filter(|&&c| c == '#').count() == hashes
        {
            return Some((j + 1 + hashes, 1));
        }
        j += 1;
    }
    Some((chars.len(), 1))
}

/// A character literal at `i`, or `None` for a lifetime.
fn char_literal(chars: &[char], i: usize) -> Option<(usize, usize)> {
    match (chars.get(i + 1), chars.get(i + 2)) {
        (Some('\\'), _) => {
            let close = chars[i + 2..].iter().position(|&c| c == '\'')?;
            Some((i + 2 + close + 1, 1))
        }
        (Some(_), Some('\'')) => Some((i + 3, 1)),
        _ => None,
    }
}
