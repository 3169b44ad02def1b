//! `kubectl agentguard audit`.

use clap::Args;

use super::{Ctx, Failure, Outcome};

#[derive(Debug, Args)]
pub struct AuditArgs {}

pub async fn run(_ctx: &Ctx, _args: AuditArgs) -> Outcome {
    Err(Failure::new("not implemented yet"))
}
