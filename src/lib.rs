//! agentguard: a Kubernetes validating admission webhook and operator that stops AI coding
//! agents and other automated identities from deleting protected data unless a human approved
//! that exact deletion. DESIGN.md is the contract for every name used here.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod api;
pub mod catalog;
pub mod certs;
pub mod check;
pub mod cli;
pub mod connection;
pub mod crds;
pub mod error;
pub mod index;
pub mod manifests;
pub mod metrics;
pub mod operator;
pub mod plugin;
pub mod policy;
pub mod runtime;
pub mod webhook;

pub use error::{Error, Result};
