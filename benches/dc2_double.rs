//! A DC2 for long-link benchmarks that costs little CPU: the Kafka-rules double of
//! proto-tests/kafka_double.rs (Apache Kafka's idempotence rules, an in-memory log
//! served by Fetch) as a server of its own, run until killed.
//!
//!   cargo bench --bench dc2_double -- --listen 127.0.0.1:9192 --advertise 127.0.0.1:9193
//!
//! Batches are appended untagged, and each partition keeps only its newest
//! `--retain-mib` MiB (the log start moves as retention would), so memory stays bounded
//! however long the run; that is far more than the replicator's DC2 tail reads need
//! (its window is bounded by `max_in_flight_bytes_per_partition`, 16 MiB by default).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use clap::Parser;
use tokio::net::TcpListener;

#[allow(dead_code)] // the scripted faults are for the tests
#[path = "../proto-tests/kafka_double.rs"]
mod kafka_double;

#[derive(Parser)]
#[command(about = "Kafka-rules DC2 double as a standalone server")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9192")]
    listen: SocketAddr,
    /// host:port that Metadata names as the broker (e.g. a relay in front of this
    /// server); the listen address when not given.
    #[arg(long)]
    advertise: Option<String>,
    /// MiB of the newest batches kept per partition.
    #[arg(long, default_value_t = 64)]
    retain_mib: usize,
    /// Criterion's harness passes this to every bench target; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (host, port) = match &args.advertise {
        Some(a) => {
            let (h, p) = a
                .rsplit_once(':')
                .ok_or_else(|| anyhow::anyhow!("--advertise {a}: expected HOST:PORT"))?;
            (h.to_string(), p.parse::<u16>()?)
        }
        None => (args.listen.ip().to_string(), args.listen.port()),
    };
    let listener = TcpListener::bind(args.listen).await?;
    let mut state = kafka_double::State::new();
    state.untagged = true;
    state.retain_bytes = Some(args.retain_mib << 20);
    eprintln!(
        "dc2_double: listening on {}, advertising {host}:{port}, keeping {} MiB per partition",
        listener.local_addr()?,
        args.retain_mib
    );
    kafka_double::accept_loop(listener, Arc::new(Mutex::new(state)), host, port).await;
    Ok(())
}
