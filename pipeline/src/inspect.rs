//! Shard-set inspection (being written).

/// Arguments of `pipeline inspect`.
#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// Shard folder.
    #[arg(long)]
    pub out: std::path::PathBuf,
}

/// Runs `pipeline inspect`.
pub fn run(_args: &InspectArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet implemented")
}
