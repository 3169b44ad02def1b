//! `kubectl agentguard restore`.

use clap::Args;

use super::{Ctx, Failure, Outcome};

#[derive(Debug, Args)]
pub struct RestoreArgs {}

pub async fn run(_ctx: &Ctx, _args: RestoreArgs) -> Outcome {
    Err(Failure::new("not implemented yet"))
}
