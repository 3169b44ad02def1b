//! Pure admission decisions: an admission request and a snapshot of what is known in, a
//! [`Decision`] with its reason out. Nothing here performs I/O, reads a clock or touches a
//! global, so every rule can be tested by a table and the hot path stays a few lookups.

mod agents;
mod decision;
mod glob;

pub use agents::{AgentDefinition, AgentMatcher, Restriction};
pub use decision::{Decision, ObjectRef, Verdict, decide};
pub use glob::{GlobError, GlobList};
