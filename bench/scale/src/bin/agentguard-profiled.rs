//! `agentguard` exactly as src/main.rs builds it, for profilers: same code, symbols kept.
fn main() -> anyhow_free::Result {
    agentguard::cli::main().map_err(|e| e.to_string())
}

mod anyhow_free {
    pub type Result = std::result::Result<(), String>;
}
