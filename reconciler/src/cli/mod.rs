//! Command-line parsing and the parts the subcommands share. A build without the
//! `dataplane` feature has `validate` and `plan --against` only.
#[cfg(feature = "dataplane")]
mod apply;
#[cfg(feature = "dataplane")]
mod daemon;
#[cfg(feature = "dataplane")]
mod fleet;
mod manual;
mod plan;
#[cfg(feature = "dataplane")]
mod reconcile;
#[cfg(feature = "dataplane")]
mod status;
#[cfg(feature = "dataplane")]
mod trace;
#[cfg(feature = "dataplane")]
mod uninstall;
mod validate;

use std::{net::IpAddr, path::PathBuf, process::ExitCode};

use clap::{Args, CommandFactory as _, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use reconciler_core::{
    source::{default_cache_dir, FetchTimeouts, GitSpec, SourceSpec},
    state::DEFAULT_PIN_PATH,
    validate::{parse_range, Policy},
    verify::{AllowedSigners, Keyring, Mode, Verify},
};

/// What `--version` says: the version, the commit, and whether this build has the data plane.
#[cfg(feature = "dataplane")]
const VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("RECONCILER_COMMIT"), ", data plane)");
#[cfg(not(feature = "dataplane"))]
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("RECONCILER_COMMIT"),
    ", validate-only: no data plane)"
);

#[derive(Parser)]
#[command(
    name = "reconciler",
    version = VERSION,
    about = "Keeps an eBPF socket load balancer in step with a git repository of service definitions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Colour in plans and errors: auto (on a terminal, unless NO_COLOR is set), always, never.
    #[arg(long, global = true, value_enum, default_value_t = ColorWhen::Auto)]
    color: ColorWhen,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ColorWhen {
    Auto,
    Always,
    Never,
}

/// Whether to colour what goes to stdout: `--color`, else a terminal without `NO_COLOR`
/// (anstream's rules, the ones clap's own help follows).
pub fn paint() -> reconciler_core::plan::Paint {
    let choice = anstream::AutoStream::choice(&std::io::stdout());
    reconciler_core::plan::Paint { colour: choice != anstream::ColorChoice::Never }
}

/// [`paint`] for stderr.
pub fn paint_stderr() -> reconciler_core::plan::Paint {
    let choice = anstream::AutoStream::choice(&std::io::stderr());
    reconciler_core::plan::Paint { colour: choice != anstream::ColorChoice::Never }
}

#[derive(Subcommand)]
enum Command {
    /// Check service definitions (schema and rules); needs no privileges.
    Validate(validate::ValidateArgs),
    /// Show what apply would change in the live maps.
    Plan(Box<plan::PlanArgs>),
    /// Make the live maps match the definitions (or a saved plan).
    #[cfg(feature = "dataplane")]
    Apply(Box<apply::ApplyArgs>),
    /// Keep the data plane in step with the repository, continuously.
    #[cfg(feature = "dataplane")]
    Daemon(daemon::DaemonArgs),
    /// Show the applied revision, generation and counts (or a running daemon's status).
    #[cfg(feature = "dataplane")]
    Status(status::StatusArgs),
    /// Detach the programs and remove every pinned map and link.
    #[cfg(feature = "dataplane")]
    Uninstall(uninstall::UninstallArgs),
    /// Stream the data plane's translations as they happen, until Ctrl-C.
    #[cfg(feature = "dataplane")]
    Trace(trace::TraceArgs),
    /// Which node runs which revision, and which are stuck, from Prometheus.
    #[cfg(feature = "dataplane")]
    Fleet(fleet::FleetArgs),
    /// Ask a running daemon for a run now (as a git webhook does), and with --wait its result.
    #[cfg(feature = "dataplane")]
    Reconcile(reconcile::ReconcileArgs),
    /// Print a completion script for a shell (bash, zsh, fish, elvish, powershell).
    Completion(manual::CompletionArgs),
    /// Write the man pages (reconciler.1 and one per subcommand) into a directory.
    #[command(hide = true)]
    Manpages(manual::ManpagesArgs),
}

/// Exit code for errors (and invalid definitions).
const FAILURE: u8 = 1;
/// Exit code of `plan --detailed-exitcode` when something would change.
const CHANGES: u8 = 2;
/// Exit code of `fleet` when a node is stuck, and of `status --daemon` when the daemon is not
/// ready or its last run failed: something for someone to look at.
#[cfg(feature = "dataplane")]
const UNHEALTHY: u8 = 2;

pub fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version are not errors; bad usage is an ordinary error (1), so
            // that 2 keeps meaning "changes" for `plan --detailed-exitcode`.
            return if e.use_stderr() { ExitCode::from(FAILURE) } else { ExitCode::SUCCESS };
        }
    };
    match cli.color {
        ColorWhen::Auto => {}
        ColorWhen::Always => anstream::ColorChoice::Always.write_global(),
        ColorWhen::Never => anstream::ColorChoice::Never.write_global(),
    }
    // Whether the process keeps Rust's default, SIGPIPE ignored, and whether it reads git.
    let (ignores_sigpipe, reads_git) = match &cli.command {
        Command::Validate(_) | Command::Plan(_) => (false, true),
        #[cfg(feature = "dataplane")]
        Command::Apply(_) => (false, true),
        // The daemon lives on; `trace` must clear its flag on the way out, so it ends on the
        // write error instead (`reconciler trace | head`).
        #[cfg(feature = "dataplane")]
        Command::Daemon(_) | Command::Trace(_) => (true, false),
        _ => (false, false),
    };
    if !ignores_sigpipe {
        // Like other Unix tools, end quietly when the reader of our output goes away
        // (`reconciler plan | head`).
        // SAFETY: setting a signal disposition before any other thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    if reads_git {
        // SAFETY: no other thread exists yet.
        unsafe { reconciler_core::source::set_server_timeouts(FetchTimeouts::default()) };
        reconciler_core::source::start_git_early();
    }
    let result = match cli.command {
        Command::Validate(args) => validate::run(args),
        Command::Plan(args) => plan::run(*args),
        #[cfg(feature = "dataplane")]
        Command::Apply(args) => apply::run(*args),
        #[cfg(feature = "dataplane")]
        Command::Daemon(args) => daemon::run(args),
        #[cfg(feature = "dataplane")]
        Command::Status(args) => status::run(args),
        #[cfg(feature = "dataplane")]
        Command::Uninstall(args) => uninstall::run(args),
        #[cfg(feature = "dataplane")]
        Command::Trace(args) => trace::run(args),
        #[cfg(feature = "dataplane")]
        Command::Fleet(args) => fleet::run(args),
        #[cfg(feature = "dataplane")]
        Command::Reconcile(args) => reconcile::run(args),
        Command::Completion(args) => manual::completion(args, Cli::command()),
        Command::Manpages(args) => manual::manpages(args, Cli::command()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(FAILURE)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// Where the definitions come from: a git repository or a plain directory.
#[derive(Args, Clone, Debug)]
pub struct SourceArgs {
    /// Git repository: a path, file://, git://, https:// or ssh URL.
    #[arg(long, value_name = "URL|PATH", conflicts_with = "dir")]
    repo: Option<String>,
    /// Branch, tag or commit (default: the remote's HEAD).
    #[arg(long = "ref", value_name = "REF", requires = "repo")]
    reference: Option<String>,
    /// Only files under this directory of the repository.
    #[arg(long, value_name = "SUBDIR", requires = "repo")]
    path: Option<PathBuf>,
    /// Read a plain directory instead of a repository.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Where fetched repositories are cached (default: $RECONCILER_CACHE_DIR, else
    /// $XDG_CACHE_HOME/reconciler, else ~/.cache/reconciler).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// ssh private key for ssh URLs (default: the ssh agent).
    #[arg(long, value_name = "FILE")]
    ssh_key: Option<PathBuf>,
    /// Refuse the commit unless it is signed by a key this SSH allowed-signers file lists
    /// for its committer (git's gpg.ssh.allowedSignersFile format).
    #[arg(long, value_name = "FILE", requires = "repo")]
    allowed_signers: Option<PathBuf>,
    /// Refuse the commit unless it is signed (OpenPGP) by a key of this armored keyring one of
    /// whose user IDs is its committer's email.
    #[arg(long, value_name = "FILE", requires = "repo")]
    keyring: Option<PathBuf>,
    /// With --allowed-signers or --keyring: what must be signed, the commit (`head`) or an
    /// annotated tag pointing at it (`tag`).
    #[arg(long, value_name = "head|tag", default_value = "head")]
    verify_mode: Mode,
}

impl SourceArgs {
    /// `--cache-dir`, or the default.
    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(default_cache_dir)
    }

    fn verify(&self) -> anyhow::Result<Option<Verify>> {
        if self.allowed_signers.is_none() && self.keyring.is_none() {
            return Ok(None);
        }
        let signers = self.allowed_signers.as_deref().map(AllowedSigners::read).transpose();
        let keyring = self.keyring.as_deref().map(Keyring::read).transpose();
        Ok(Some(Verify { mode: self.verify_mode, signers: signers?, keyring: keyring? }))
    }

    pub fn spec(&self) -> anyhow::Result<SourceSpec> {
        if self.dir.is_some() {
            let git_only = [("--ref", self.reference.is_some()), ("--path", self.path.is_some())];
            if let Some((flag, _)) = git_only.iter().find(|(_, given)| *given) {
                anyhow::bail!("{flag} selects from a git repository (--repo), not from --dir");
            }
        }
        match (&self.repo, &self.dir) {
            (Some(url), None) => Ok(SourceSpec::Git(GitSpec {
                url: url.clone(),
                reference: self.reference.clone(),
                subdir: self.path.clone(),
                cache_dir: self.cache_dir(),
                ssh_key: self.ssh_key.clone(),
                verify: self.verify()?,
                timeouts: FetchTimeouts::default(),
            })),
            (None, Some(dir)) => Ok(SourceSpec::Dir(dir.clone())),
            _ => anyhow::bail!("say where the definitions are: --repo URL|PATH or --dir DIR"),
        }
    }
}

/// The node the definitions are planned for (`spec.nodeSelector`).
#[derive(Args, Clone, Debug)]
pub struct NodeArgs {
    /// This node's name (default: the host name). With it or `--node-label`, only the services
    /// whose nodeSelector selects this node are planned; without either, every service.
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,
    /// A label of this node, `KEY=VALUE` (repeatable), as the daemon's `node.labels`.
    #[arg(long = "node-label", value_name = "KEY=VALUE", value_parser = label)]
    node_labels: Vec<(String, String)>,
}

impl NodeArgs {
    /// The node asked for, if one is.
    pub fn node(&self) -> Option<reconciler_core::selector::Node> {
        if self.node_name.is_none() && self.node_labels.is_empty() {
            return None;
        }
        let name = self.node_name.clone().unwrap_or_else(reconciler_core::node::host_name);
        let labels: std::collections::BTreeMap<String, String> =
            self.node_labels.iter().cloned().collect();
        // As the daemon's default `node.zoneLabel`.
        let zone = labels.get("zone").cloned();
        Some(reconciler_core::selector::Node { name, labels, zone })
    }
}

/// `KEY=VALUE`.
fn label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').ok_or_else(|| format!("`{text}` is not KEY=VALUE"))?;
    if key.is_empty() {
        return Err(format!("`{text}` has no key"));
    }
    Ok((key.to_owned(), value.to_owned()))
}

/// What `plan` and `apply` read and change: the definitions, the data plane, the rules.
#[derive(Args, Clone, Debug)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub pin: PinArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub node: NodeArgs,
    /// Addresses of this node that may nevertheless be VIPs (comma-separated); by default a
    /// VIP equal to an address of one of the node's interfaces is refused.
    #[arg(long, value_name = "IP,...", value_delimiter = ',')]
    allow_local_vips: Vec<IpAddr>,
    /// Read every entry of the live maps, so hand edits anywhere show (by default only the
    /// services that changed since the recorded apply are read: docs/cli.md).
    #[arg(long)]
    pub refresh: bool,
    /// The maps' capacity, set at install: `services=N,backends=N,slots=N,connections=N,
    /// affinity=N` (those not given keep their defaults: docs/dataplane.md). An installed data
    /// plane must have it; without it, it keeps its own.
    #[arg(long, value_name = "NAME=COUNT,...")]
    pub capacity: Option<reconciler_core::capacity::Capacity>,
}

#[cfg(feature = "dataplane")]
impl ReconcileArgs {
    /// The rules for this node: the policy plus the node's own addresses, and the capacity
    /// asked for (failovers must fit it).
    pub fn node_policy(&self) -> anyhow::Result<Policy> {
        Ok(Policy {
            local_addresses: reconciler_core::node::local_addresses(&self.allow_local_vips)
                .map_err(|e| anyhow::anyhow!("listing this node's addresses: {e}"))?,
            capacity: self.capacity,
            ..self.policy.policy()
        })
    }
}

#[cfg(feature = "dataplane")]
impl ReconcileArgs {
    /// The session for these arguments, with the memo of its source and data plane (see
    /// [`MemoFile`]).
    pub fn session(
        &self,
        spec: SourceSpec,
    ) -> anyhow::Result<(reconciler::pipeline::Session, MemoFile)> {
        let (file, memo) = MemoFile::open(&spec, &self.pin.pin_path);
        let session =
            reconciler::pipeline::Session::new(spec, &self.pin.pin_path, self.node_policy()?);
        let session = session.with_memo(memo).with_capacity(self.capacity);
        Ok((session.with_node(self.node.node()), file))
    }
}

/// The incremental path's memo file of a git source and data plane, in the cache directory.
#[cfg(feature = "dataplane")]
pub struct MemoFile {
    path: Option<PathBuf>,
}

#[cfg(feature = "dataplane")]
impl MemoFile {
    /// The memo for `spec` and `pin_path` (none for a directory); a damaged one is ignored,
    /// with a warning, and rewritten at the end.
    fn open(spec: &SourceSpec, pin_path: &std::path::Path) -> (MemoFile, reconciler::memo::Memo) {
        use reconciler::{memo::Memo, pipeline::Tree};
        let path = match (spec, Tree::source_of(spec)) {
            (SourceSpec::Git(git), Some(source)) => {
                Some(Memo::path(&git.cache_dir, pin_path, &source))
            }
            _ => None,
        };
        let (memo, problem) = path.as_deref().map_or_else(|| (Memo::default(), None), Memo::load);
        if let Some(problem) = problem {
            eprintln!("warning: {problem}; reading everything instead, and rewriting it");
        }
        (MemoFile { path }, memo)
    }

    /// Writes `memo` back if it learned anything.
    pub fn save(&self, memo: &reconciler::memo::Memo) {
        let Some(path) = self.path.as_ref().filter(|_| memo.changed) else { return };
        if let Err(e) = memo.save(path) {
            eprintln!("warning: not saved, the next run reads everything: {e}");
        }
    }
}

/// The data plane to read or change.
#[derive(Args, Clone, Debug)]
pub struct PinArgs {
    /// Directory on bpffs where the maps and links are pinned.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_PATH)]
    pin_path: PathBuf,
}

/// Rules beyond the schema.
#[derive(Args, Clone, Debug, Default)]
pub struct PolicyArgs {
    /// Every VIP must lie in one of these CIDR ranges (comma-separated).
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',', value_parser = parse_range)]
    allowed_vips: Option<Vec<IpNet>>,
    /// Loopback and node addresses (CIDR ranges, comma-separated) that health checks may
    /// nevertheless probe; by default a check never probes the node itself.
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',', value_parser = parse_range)]
    allow_local_health_checks: Vec<IpNet>,
}

impl PolicyArgs {
    pub fn policy(&self) -> Policy {
        Policy {
            allowed_vips: self.allowed_vips.clone(),
            allow_local_health_checks: self.allow_local_health_checks.clone(),
            ..Policy::default()
        }
    }
}
