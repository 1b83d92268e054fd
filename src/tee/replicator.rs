//! The DC2 side of the tee: per-partition ordered queues, pipelined Produce to DC2
//! leaders, retries, checkpoints and catch-up from DC1.
//!
//! Interface used by the proxy (server.rs): `start`, `Replicator::handle`,
//! `ReplicatorHandle::push`, `Replicator::shutdown`. Body under construction.

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::tee::{Budget, Pending, TopicPartition};

pub struct Replicator {
    handle: ReplicatorHandle,
}

#[derive(Clone)]
pub struct ReplicatorHandle {
    budget: Arc<Budget>,
}

pub async fn start(_config: &Config, budget: Arc<Budget>) -> anyhow::Result<Replicator> {
    Ok(Replicator {
        handle: ReplicatorHandle { budget },
    })
}

impl Replicator {
    pub fn handle(&self) -> ReplicatorHandle {
        self.handle.clone()
    }
    pub async fn shutdown(self, _grace: Duration) {}
}

impl ReplicatorHandle {
    pub fn push(&self, _tp: TopicPartition, item: Pending) {
        if let Pending::Batch { records, .. } = item {
            self.budget.release(records.len());
        }
    }
}
