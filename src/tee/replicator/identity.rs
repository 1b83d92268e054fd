//! The DC2 producer identity every worker of this instance writes under: obtained
//! once with InitProducerId, renewed when DC2 fences or forgets it.

use std::sync::Mutex;

use crate::client::{Client, ClientError};

/// The DC2 producer identity all workers share. `generation` changes when it is
/// renewed, so workers notice and restart their sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Identity {
    pub(super) producer_id: i64,
    pub(super) epoch: i16,
    pub(super) generation: u64,
}

#[derive(Debug, Default)]
pub(super) struct IdentityCell {
    current: Mutex<Option<Identity>>,
    /// One InitProducerId at a time.
    init: tokio::sync::Mutex<()>,
}

impl IdentityCell {
    pub(super) fn peek(&self) -> Option<Identity> {
        *crate::sync::lock(&self.current)
    }

    pub(super) fn set(&self, id: Identity) {
        *crate::sync::lock(&self.current) = Some(id);
    }

    /// The identity in force, obtained from DC2 if there is none yet.
    pub(super) async fn current(&self, dc2: &Client) -> Result<Identity, ClientError> {
        if let Some(id) = self.peek() {
            return Ok(id);
        }
        let _g = self.init.lock().await;
        if let Some(id) = self.peek() {
            return Ok(id);
        }
        self.obtain(dc2, 1).await
    }

    /// A new identity, unless someone already replaced the `stale` generation.
    pub(super) async fn renew(&self, dc2: &Client, stale: u64) -> Result<Identity, ClientError> {
        let _g = self.init.lock().await;
        if let Some(id) = self.peek()
            && id.generation != stale
        {
            return Ok(id);
        }
        metrics::counter!("kafka_tee_producer_id_renewals_total").increment(1);
        self.obtain(dc2, stale + 1).await
    }

    async fn obtain(&self, dc2: &Client, generation: u64) -> Result<Identity, ClientError> {
        let timeout = dc2.config().request_timeout;
        let (producer_id, epoch) = dc2.retry(timeout, || dc2.init_producer_id()).await?;
        let id = Identity {
            producer_id,
            epoch,
            generation,
        };
        tracing::info!(producer_id, epoch, "DC2 producer id obtained");
        self.set(id);
        Ok(id)
    }
}
