//! Command line: parse flags, load and validate configuration, run the proxy or one of
//! the tool subcommands. Exit codes: 0 ok, 1 runtime failure, 2 bad usage or config.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use kafka_tee::config::Config;

/// Huge single allocations are reserved lazily; see `kafka_tee::alloc`.
#[global_allocator]
static ALLOCATOR: kafka_tee::alloc::Allocator = kafka_tee::alloc::Allocator;

#[derive(Parser, Debug)]
#[command(
    name = "kafka-tee",
    version,
    about = "Kafka proxy that tees acknowledged produce batches to a second cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args, Debug, Default)]
struct RunArgs {
    /// TOML configuration file; flags override its fields.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Bootstrap listener for clients.
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// DC1 bootstrap addresses, comma separated.
    #[arg(long, value_name = "HOST:PORT[,...]", value_delimiter = ',')]
    source: Vec<String>,
    /// DC2 bootstrap addresses; replication is off without it.
    #[arg(long, value_name = "HOST:PORT[,...]", value_delimiter = ',')]
    target: Vec<String>,
    /// Admin HTTP address (metrics, health).
    #[arg(long, value_name = "HOST:PORT")]
    admin: Option<String>,
    /// Directory for durable state (checkpoints).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Share the replication with every instance started with the same group name
    /// (replication.group): ownership and positions live in DC1's consumer group.
    #[arg(long, value_name = "NAME")]
    replication_group: Option<String>,
    /// Translate the committed offsets of the DC1 consumer groups matching REGEX
    /// (repeatable) and commit them to the same groups in DC2
    /// (replication.group_offsets.include).
    #[arg(long, value_name = "REGEX")]
    sync_groups: Vec<String>,
    /// Host name put in broker addresses handed to clients.
    #[arg(long, value_name = "HOST")]
    advertised_host: Option<String>,
    /// Threads that run connections (default: one per CPU core).
    #[arg(long, value_name = "N")]
    worker_threads: Option<usize>,
    /// PEM certificate chain: client-facing ports speak TLS (with --tls-key).
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// PEM CA bundle: clients must present a certificate it signed (mTLS).
    #[arg(long, value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,
    /// Log filter (tracing EnvFilter syntax), e.g. info or kafka_tee=debug.
    #[arg(long, env = "KAFKA_TEE_LOG", default_value = "info")]
    log: String,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Compare DC1 and DC2 record by record and print what differs.
    Verify(kafka_tee::verify::VerifyArgs),
    /// Show a consumer group's committed offsets in DC1, their DC2 translation and
    /// DC2's committed offsets, per partition (exit 0 when DC2 holds the exact
    /// translation of every one, 1 otherwise).
    Offsets(kafka_tee::offsets::OffsetsArgs),
    /// Validate a configuration file and report every problem.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Show a running proxy's replication state (from its admin endpoint) as a table.
    Status {
        /// The proxy's admin address, as given to its --admin.
        #[arg(long, value_name = "HOST:PORT")]
        admin: String,
        /// Seconds to wait for the answer.
        #[arg(long, value_name = "SECONDS", default_value_t = 5)]
        timeout: u64,
        /// Print the status as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.run.log);
    match cli.command {
        Some(Command::CheckConfig { file }) => {
            match Config::from_file(&file).and_then(|c| c.validate().map(|_| c)) {
                Ok(_) => {
                    println!("{}: ok", file.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(2)
                }
            }
        }
        Some(Command::Verify(args)) => block_on(kafka_tee::verify::run(args), 0),
        Some(Command::Offsets(args)) => block_on(kafka_tee::offsets::run(args), 0),
        Some(Command::Status {
            admin,
            timeout,
            json,
        }) => block_on(status(admin, timeout, json), 0),
        None => {
            let config = match load_config(&cli.run) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("kafka-tee: {e}");
                    return ExitCode::from(2);
                }
            };
            let workers = config.proxy.worker_threads;
            block_on(kafka_tee::server::run_until_signal(config), workers)
        }
    }
}

async fn status(admin: String, timeout: u64, json: bool) -> anyhow::Result<ExitCode> {
    let timeout = std::time::Duration::from_secs(timeout.max(1));
    match kafka_tee::admin::fetch_status(&admin, timeout).await {
        Ok(report) if json => {
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Ok(report) => {
            print!("{}", kafka_tee::status::render_table(&report));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("kafka-tee status: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Runs `f` on a multi-threaded runtime with `workers` threads (0: one per core).
fn block_on<F: std::future::Future<Output = anyhow::Result<ExitCode>>>(
    f: F,
    workers: usize,
) -> ExitCode {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if workers > 0 {
        builder.worker_threads(workers);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kafka-tee: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kafka-tee: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(args: &RunArgs) -> Result<Config, kafka_tee::config::ConfigError> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(l) = &args.listen {
        config.proxy.listen = l.clone();
    }
    if !args.source.is_empty() {
        config.source.bootstrap = args.source.clone();
    }
    if !args.target.is_empty() {
        config.target.bootstrap = args.target.clone();
    }
    if let Some(a) = &args.admin {
        config.admin.listen = Some(a.clone());
    }
    if let Some(d) = &args.state_dir {
        config.state.dir = Some(d.clone());
    }
    if let Some(g) = &args.replication_group {
        config.replication.group = Some(g.clone());
    }
    if !args.sync_groups.is_empty() {
        config.replication.group_offsets.include = args.sync_groups.clone();
    }
    if let Some(h) = &args.advertised_host {
        config.proxy.advertised_host = Some(h.clone());
    }
    if let Some(n) = args.worker_threads {
        config.proxy.worker_threads = n;
    }
    if let Some(p) = &args.tls_cert {
        config.tls.cert = Some(p.clone());
    }
    if let Some(p) = &args.tls_key {
        config.tls.key = Some(p.clone());
    }
    if let Some(p) = &args.tls_client_ca {
        config.tls.client_ca = Some(p.clone());
    }
    config.validate()?;
    Ok(config)
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
