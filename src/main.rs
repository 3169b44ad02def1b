fn main() -> anyhow::Result<()> {
    agentguard::cli::main()
}
