//! `dura-bench wal`: the write-ahead log benchmark (group commit against one synced
//! write per record, and against the raw device).

use std::path::PathBuf;

/// Arguments of `dura-bench wal`.
#[derive(Debug, clap::Args)]
pub struct WalArgs {
    /// Directory on the device under test.
    #[arg(long)]
    pub dir: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs the WAL benchmark.
pub fn run(args: &WalArgs) -> anyhow::Result<()> {
    anyhow::bail!("the WAL benchmark is not built yet (dir {})", args.dir.display())
}
