//! Plans: the entry-level difference between the live and the desired map state, grouped by
//! service and shown the way Terraform shows a plan (`+` create, `~` update, `-` destroy).
//!
//! Both sides are read back from map states into the same [`ServiceView`], so what the plan
//! shows is what the maps hold, including entries someone wrote by hand (drift).
//!
//! `make` makes a plan, `view` the services' views; its text is `render`, its saved file
//! `saved`.
mod make;
mod render;
mod rollouts;
mod saved;
mod view;

pub use make::{make_plan, Action, Plan, PlanContext, ServicePlan, Summary, FORMAT_VERSION};
pub use render::render_text;
pub use rollouts::rollout_notes;
pub use saved::{from_saved, to_saved, NodeKey, SavedPlanError};
pub use view::{views, ServiceView};
