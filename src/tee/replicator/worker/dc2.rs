//! The worker's DC2 side before anything is sent: the DC2 topic checked (and the
//! partition's data held as gaps while it is not ready), and the DC2 producer identity
//! taken, switched to a renewed one, or renewed when DC2 lost track of it.

use super::super::Identity;
use super::super::topics::{GateContext, RECHECK};
use super::Worker;

impl Worker {
    pub(super) fn is_ready(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.is_ready())
    }

    /// Checks the DC2 topic; holds the partition's data while it is not ready.
    pub(super) async fn check_topic(&mut self) {
        let ctx = GateContext {
            dc1: &self.sh.dc1,
            dc2: &self.sh.dc2,
            create_topics: self.sh.settings.create_topics,
            timeout: self.sh.settings.request_timeout,
        };
        let checked = self
            .gate
            .ensure(&ctx, &self.tp.topic, &self.dc2_topic)
            .await;
        match checked {
            Ok(s) if s.is_ready() => {
                self.status = Some(s);
                self.backoff.reset();
                self.trouble = None;
            }
            Ok(s) => {
                self.status = Some(s);
                self.hold();
                self.pause(RECHECK).await;
            }
            Err(e) => {
                self.warn_limited(&format!(
                    "cannot check the DC2 topic {}: {e}",
                    self.dc2_topic
                ));
                let d = self.backoff.next_delay();
                self.pause(d).await;
            }
        }
    }

    /// Turns everything not yet in DC2 into gaps (read back from DC1 later) and frees
    /// its memory. Only called when nothing is awaiting an answer.
    pub(super) fn hold(&mut self) {
        // Each batch dropped here gives its budget back.
        let mut ranges = Vec::new();
        for r in self.window.drain() {
            ranges.push((r.first, r.last));
        }
        self.shrink_window(self.window_bytes);
        for r in self.ready.drain(..) {
            ranges.push((r.first, r.last));
        }
        if let Some(c) = self.catchup.take()
            && !c.done()
        {
            ranges.push((c.next, c.to));
        }
        for (a, b) in ranges.into_iter().rev() {
            self.queue.push_front_gap(a, b);
        }
        self.queue.batches_to_gaps();
        self.sent_upto = self.acked;
        self.catchup_retry_at = None;
        self.leader = None;
    }

    /// Makes sure the worker has a DC2 producer identity, switching to a renewed one
    /// when nothing is in flight. Returns false after a failed attempt (already paused).
    pub(super) async fn ensure_identity(&mut self) -> bool {
        let current = self.sh.identity.peek();
        if let (Some(mine), Some(cur)) = (self.ident, current) {
            if mine.generation == cur.generation
                || !self.flights.is_empty()
                || !self.window.is_open()
            {
                return true;
            }
            self.switch_identity(cur);
            return true;
        }
        match self.sh.identity.current(&self.sh.dc2).await {
            Ok(id) => {
                self.switch_identity(id);
                true
            }
            Err(e) => {
                self.warn_limited(&format!("cannot get a DC2 producer id: {e}"));
                let d = self.backoff.next_delay();
                self.pause(d).await;
                false
            }
        }
    }

    pub(super) fn switch_identity(&mut self, id: Identity) {
        let restored = match self.restored_seq.take() {
            Some((pid, epoch, seq)) if pid == id.producer_id && epoch == id.epoch => Some(seq),
            _ => None,
        };
        self.ident = Some(id);
        self.window.set_acked_seq(restored.unwrap_or(0));
        if restored.is_some() {
            // DC2 may hold batches written after the checkpoint: they are read back
            // from DC1 and must not be written twice.
            self.window.require_tail();
        }
    }

    /// A new DC2 producer identity (numbering restarts at 0), or `None` on failure.
    pub(super) async fn renew(&mut self) -> Option<i32> {
        let stale = self.ident?;
        match self.sh.identity.renew(&self.sh.dc2, stale.generation).await {
            Ok(id) => {
                tracing::warn!(
                    partition = %self.tp, producer_id = id.producer_id, epoch = id.epoch,
                    "DC2 lost track of the replicator's producer; continuing with a new producer id"
                );
                self.ident = Some(id);
                Some(0)
            }
            Err(e) => {
                self.warn_limited(&format!("cannot renew the DC2 producer id: {e}"));
                None
            }
        }
    }
}
