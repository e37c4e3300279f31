//! Feature orchestration (being written).

/// Arguments of `pipeline features`.
#[derive(clap::Args, Debug)]
pub struct FeaturesArgs {
    /// Output folder of the shards.
    #[arg(long)]
    pub out: std::path::PathBuf,
}

/// Runs `pipeline features`.
pub fn run(_args: &FeaturesArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet implemented")
}
