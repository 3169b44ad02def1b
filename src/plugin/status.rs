//! `kubectl agentguard status`.

use clap::Args;

use super::{Ctx, Failure, Outcome};

#[derive(Debug, Args)]
pub struct StatusArgs {}

pub async fn run(_ctx: &Ctx, _args: StatusArgs) -> Outcome {
    Err(Failure::new("not implemented yet"))
}
