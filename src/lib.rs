//! kafka-tee: a Kafka-protocol proxy that forwards clients to DC1 and copies every
//! acknowledged produce batch to DC2.
//!
//! Data flows one way: `net` and `protocol` know nothing of the rest; `proxy` uses
//! them and hands acknowledged batches to `tee`; `status` and `admin` read the typed
//! snapshots the proxy and the tee publish. README.md's "Code map" lists every file.
//!
//! - `config`: file format, flags, validation.
//! - `protocol`: frame codec, header peeks, the Produce request parser, the record
//!   batch format, version caps.
//! - `net`: plain I/O under the proxy: TLS set-up and handshake diagnosis, splice and
//!   tee pipes for large frames.
//! - `proxy`: listeners, one client session (request half, response half, the pure
//!   per-request plan), broker routing, response rewrites, connection counts.
//! - `client`: a small Kafka client of our own (metadata, leaders, pipelined requests)
//!   used for DC2 and for reading back from DC1.
//! - `tee`: capture of acked batches, ordering, the DC2 replicator, the snapshots it
//!   publishes.
//! - `verify`: record-by-record comparison of DC1 and DC2.
//! - `offsets`: `kafka-tee offsets`, consumer group offsets in DC1 and DC2 side by side.
//! - `server`: wires it all together: `run(config, shutdown)`.
//! - `metrics`: every metric's name and description, the Prometheus recorder.
//! - `status`: readiness and the status report (`/status.json`, `kafka-tee status`).
//! - `admin`: the admin HTTP endpoint (`/metrics`, `/healthz`, `/readyz`, `/`) and the
//!   CLI's client for it.
//! - `alloc`: the process allocator (huge single allocations reserved lazily).
//! - `sync`: lock helpers that survive a poisoned mutex.
//! - `testing`: encoders and a fake broker's request reader for tests and benches.

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
#[doc(hidden)]
pub mod testing;
pub mod verify;
