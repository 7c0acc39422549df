//! What a source yields: the definition files of one revision, and the ones not read.
/// The definition files of one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The full commit id (40 or 64 hex chars) for git; None for a Dir source.
    pub revision: Option<String>,
    /// The .yaml/.yml files under the subdir (recursively), sorted by path.
    pub files: Vec<SourceFile>,
    /// Definition files that were not read, and why (a symbolic link, over a limit, not
    /// UTF-8); validation reports each, so a revision with any is invalid.
    pub problems: Vec<FileProblem>,
    /// What a directory reader passed over, and why: symbolic links that are not definition
    /// files (never followed), and other filesystems mounted inside the tree (not entered).
    pub skipped: Vec<FileProblem>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFile {
    /// Path as people should see it in error messages: relative to the repository root for git
    /// (e.g. "services/team-a/web.yaml"), the directory as given joined with the relative path
    /// for Dir (e.g. "examples/policies/team-web/web.yaml").
    pub path: String,
    /// The file's text; `None` when it was not read because the caller already holds what
    /// its blob validates to (see `source::fetch_reusing`).
    pub text: Option<String>,
    /// The git blob id (the content's address) of a file read from git.
    pub blob: Option<String>,
}

impl SourceFile {
    /// A file read from anywhere but git.
    pub fn new(path: impl Into<String>, text: impl Into<String>) -> Self {
        SourceFile { path: path.into(), text: Some(text.into()), blob: None }
    }
}

/// A definition file that was not read, or a path that was skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileProblem {
    pub path: String,
    pub message: String,
}
