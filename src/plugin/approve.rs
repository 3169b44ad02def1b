//! `kubectl agentguard approve`.

use clap::Args;

use super::{Ctx, Failure, Outcome};

#[derive(Debug, Args)]
pub struct ApproveArgs {}

pub async fn run(_ctx: &Ctx, _args: ApproveArgs) -> Outcome {
    Err(Failure::new("not implemented yet"))
}
