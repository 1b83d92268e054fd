//! Pure per-request decisions: what a request's response will need (`plan_response`,
//! which also rewrites a Produce with acks=0 so the tee sees its answer), whether a
//! response may pass untouched, and how requests are counted.

use std::time::Instant;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, EndTxnRequest};

use super::context::{SessionContext, SessionError};
use crate::net::splice::Moved;
use crate::protocol::RequestHeaderPeek;
use crate::protocol::header::{DecodeError, guarded_decode, split_request};
use crate::protocol::produce::{parse_produce_request, with_acks};
use crate::proxy::rewrite::{self};
use crate::tee::capture::Ticket;

/// What the response half must do with the answer to one request.
pub(super) enum Action {
    Forward,
    Produce(Option<Ticket>),
    EndTxn { producer_id: i64, committed: bool },
}

pub(super) struct ResponsePlan {
    pub correlation_id: i32,
    pub key: Option<ApiKey>,
    pub version: i16,
    /// The client sent acks=0: the response is for the tee only.
    pub swallow: bool,
    pub action: Action,
    pub started: Instant,
}

impl ResponsePlan {
    /// The entry for a request just read, its response not yet seen.
    pub(super) fn new(peek: &RequestHeaderPeek, action: Action) -> Self {
        ResponsePlan {
            correlation_id: peek.correlation_id,
            key: peek.key(),
            version: peek.api_version,
            swallow: false,
            action,
            started: Instant::now(),
        }
    }
}

/// Decides what a request's response will need, and rewrites the request if the tee
/// must see a response the client did not ask for.
pub(super) fn plan_response(
    frame: Bytes,
    peek: &RequestHeaderPeek,
    ctx: &SessionContext,
) -> Result<(Bytes, ResponsePlan), SessionError> {
    let version = peek.api_version;
    let mut entry = ResponsePlan::new(peek, Action::Forward);
    match peek.key() {
        Some(ApiKey::Produce) => {
            let mut frame = frame;
            let view = match parse_produce_request(&frame) {
                Ok(v) => v,
                // Without the tee an unreadable request is the broker's to judge; with
                // it, forwarding would let DC1 keep data DC2 can never get.
                Err(e) if ctx.capture.is_some() => {
                    return Err(SessionError::Client(format!(
                        "refusing Produce request: {e}"
                    )));
                }
                Err(_) => return Ok((frame, entry)),
            };
            if view.acks == 0 {
                // acks=0 goes to DC1 as acks=1 and the proxy keeps the answer: the tee
                // learns the offsets, and the in-flight FIFO stays exact even with
                // brokers that answer acks=0 requests anyway.
                frame = with_acks(&frame, view.acks_offset, 1)
                    .ok_or_else(|| SessionError::Client("acks field out of range".into()))?;
                entry.swallow = true;
            }
            let ticket = ctx.capture.as_ref().and_then(|c| c.on_request(&view));
            entry.action = Action::Produce(ticket);
            Ok((frame, entry))
        }
        Some(ApiKey::EndTxn) if ctx.capture.is_some() => {
            let (_, mut body) = split_request(ApiKey::EndTxn, &frame).map_err(client_decode)?;
            let req: EndTxnRequest =
                guarded_decode(&mut body, version, "EndTxn request").map_err(client_decode)?;
            entry.action = Action::EndTxn {
                producer_id: req.producer_id.0,
                committed: req.committed,
            };
            Ok((frame, entry))
        }
        _ => Ok((frame, entry)),
    }
}

fn client_decode(e: DecodeError) -> SessionError {
    SessionError::Client(e.to_string())
}

/// Counts bytes that [`forward_body`] spliced.
pub(super) fn count_spliced(moved: Moved, direction: &'static str) {
    if let Moved::Spliced(n) = moved {
        metrics::counter!("kafka_tee_spliced_bytes_total", "direction" => direction)
            .increment(n as u64);
    }
}

/// Whether a response goes to the client exactly as DC1 sent it, so its body need
/// not be read (see `process_response`).
pub(super) fn passes_untouched(entry: &ResponsePlan) -> bool {
    !entry.swallow
        && matches!(entry.action, Action::Forward)
        && entry
            .key
            .is_none_or(|k| !rewrite::needs_rewrite(k, entry.version))
}

/// Whether `buf` starts with a whole frame (so more data is ready without waiting).
pub(super) fn has_complete_frame(buf: &[u8]) -> bool {
    match buf.get(..4) {
        Some(p) => {
            let size = i32::from_be_bytes([p[0], p[1], p[2], p[3]]);
            size >= 0 && buf.len() >= 4 + size as usize
        }
        None => false,
    }
}
