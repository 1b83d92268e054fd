//! kafka-tee: a Kafka-protocol proxy that forwards clients to DC1 and copies every
//! acknowledged produce batch to DC2.
//!
//! - `config`: file format, flags, validation.
//! - `protocol`: frame codec, header peeks, the Produce request parser, version caps.
//! - `net`: listeners (bootstrap and one per DC1 broker), upstream connections.
//! - `proxy`: one client session, broker routing, response rewrites.
//! - `client`: a small Kafka client of our own (metadata, leaders, pipelined requests)
//!   used for DC2 and for reading back from DC1.
//! - `tee`: capture of acked batches, ordering, the DC2 replicator.
//! - `verify`: record-by-record comparison of DC1 and DC2.
//! - `server`: wires it all together: `run(config, shutdown)`.
//! - `metrics`: every metric's name and description, the Prometheus recorder.
//! - `status`: readiness and the status report (`/status.json`, `kafka-tee status`).
//! - `admin`: the admin HTTP endpoint (`/metrics`, `/healthz`, `/readyz`, `/`).
//! - `alloc`: the process allocator (huge single allocations reserved lazily).

pub mod admin;
pub mod alloc;
pub mod client;
pub mod config;
pub mod metrics;
pub mod net;
pub mod offsets;
pub mod protocol;
pub mod proxy;
pub mod server;
pub mod status;
pub mod sync;
pub mod tee;
pub mod verify;
