//! Pure admission decisions: an admission request, a [`Snapshot`] of what is known and the
//! current time in, a [`Decision`] with its reason out. Nothing here performs I/O, reads a clock
//! or touches a global, so every rule can be tested by a table and the hot path stays a few
//! lookups.

mod agents;
mod cascade;
mod compiled;
mod decision;
mod glob;
pub mod handles;
pub mod managers;
mod proxy;
mod seal;

pub use agents::{AgentDefinition, AgentMatcher, Restriction, SubjectMatcher};
pub use cascade::{CascadeHit, ProtectedObjects};
pub use compiled::{
    ApproverSet, CompiledPolicy, ObjectFacts, PolicyKind, PolicyRef, Snapshot, compile,
    parse_duration,
};
pub use decision::{ApprovalEvent, Decision, ObjectRef, Verdict, decide, seal_patch};
pub use glob::{GlobError, GlobList};
pub use proxy::{Applies, ProxyRule, RULES as PROXY_RULES, Reach, Target};
pub use seal::{KEY_BYTES, KEY_PREFIX, Keyring, SealInput, SealProblem, key_created};

#[cfg(test)]
mod proptests;
