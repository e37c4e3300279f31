//! Embedded demo dataset generator (being written).

/// Arguments of `pipeline synth`.
#[derive(clap::Args, Debug)]
pub struct SynthArgs {
    /// Output folder.
    #[arg(long)]
    pub out: std::path::PathBuf,
}

/// Runs `pipeline synth`.
pub fn run(_args: &SynthArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet implemented")
}
