//! `kafka-tee verify`: reads a topic from DC1 and DC2 and compares record by record.

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// DC1 bootstrap addresses.
    #[arg(long, value_delimiter = ',', required = true)]
    pub source: Vec<String>,
    /// DC2 bootstrap addresses.
    #[arg(long, value_delimiter = ',', required = true)]
    pub target: Vec<String>,
    /// Topics to compare (repeatable).
    #[arg(long, required = true)]
    pub topic: Vec<String>,
    /// Prefix of the topic names in DC2.
    #[arg(long, default_value = "")]
    pub topic_prefix: String,
}

pub async fn run(_args: VerifyArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("verify is not implemented yet")
}
