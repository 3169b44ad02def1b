//! `kubectl agentguard`: the kubectl plugin for the humans around agentguard.

fn main() -> std::process::ExitCode {
    agentguard::plugin::main()
}
