//! Plans: the entry-level difference between the live and the desired map state, grouped by
//! service and shown the way Terraform shows a plan (`+` create, `~` update, `-` destroy).
//!
//! Both sides are read back from map states into the same [`ServiceView`], so what the plan
//! shows is what the maps hold, including entries someone wrote by hand (drift).
//!
//! `make` makes a plan, `view` the services' views, `warnings` what a reviewer must not
//! miss; its text is `render`, its saved file `saved`.
mod make;
mod markdown;
mod paint;
mod render;
mod rollouts;
mod saved;
mod view;
mod warnings;

pub use make::{
    make_plan, Action, Comparison, Plan, PlanContext, ServicePlan, Summary, FORMAT_VERSION,
};
pub use markdown::{render_markdown, render_markdown_invalid, COMMENT_LIMIT, MARKER};
pub use paint::Paint;
pub use render::render_text;
pub use rollouts::rollout_notes;
pub use saved::{from_saved, to_saved, NodeKey, SavedPlanError};
pub use view::{views, Affinity, BackendView, Balancing, PortView, ServiceView};
pub use warnings::{Warning, WarningKind};
