//! Response bodies: a cached `Bytes` (hits, buffered misses) or an upstream body streamed
//! through, with an idle timeout so a stalled upstream cannot hold a visitor forever.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use prometheus::IntCounter;
use tokio::time::{Instant, Sleep};

/// What tamis answers with.
pub type ProxyBody = Either<Full<Bytes>, Streamed>;

/// A complete body held in memory.
pub fn full(bytes: Bytes) -> ProxyBody {
    Either::Left(Full::new(bytes))
}

/// An empty body.
pub fn empty() -> ProxyBody {
    Either::Left(Full::new(Bytes::new()))
}

/// A streamed upstream body that broke off.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("upstream body stalled for {0:?}")]
    Idle(Duration),
    #[error("upstream body: {0}")]
    Upstream(#[from] hyper::Error),
}

/// An upstream body: chunks already read (while trying to buffer it), then the rest as it
/// arrives. Trailers are not forwarded.
pub struct Streamed {
    prefix: VecDeque<Bytes>,
    rest: Option<Incoming>,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    /// Counts the bytes sent (`tamis_served_bytes_total{result="upstream"}`).
    sent: IntCounter,
}

impl Streamed {
    /// Streams `prefix` then `rest`, failing if `rest` stays silent for `idle`.
    pub fn new(
        prefix: Vec<Bytes>,
        rest: Option<Incoming>,
        idle: Duration,
        sent: IntCounter,
    ) -> Streamed {
        Streamed {
            prefix: prefix.into(),
            rest,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            sent,
        }
    }
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        let this = self.get_mut();
        if let Some(chunk) = this.prefix.pop_front() {
            this.sent.inc_by(chunk.len() as u64);
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        let Some(rest) = this.rest.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(rest).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.timer.as_mut().reset(Instant::now() + this.idle);
                match frame.into_data() {
                    Ok(data) => {
                        this.sent.inc_by(data.len() as u64);
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    Err(_trailers) => {
                        this.rest = None;
                        Poll::Ready(None)
                    }
                }
            }
            Poll::Ready(Some(Err(e))) => {
                this.rest = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.rest = None;
                Poll::Ready(None)
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.rest = None;
                    Poll::Ready(Some(Err(StreamError::Idle(this.idle))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self.prefix.iter().map(|b| b.len() as u64).sum();
        let rest = self
            .rest
            .as_ref()
            .map(|r| r.size_hint())
            .unwrap_or_else(|| SizeHint::with_exact(0));
        let mut hint = SizeHint::new();
        hint.set_lower(buffered + rest.lower());
        if let Some(upper) = rest.upper() {
            hint.set_upper(buffered + upper);
        }
        hint
    }
}

use std::future::Future as _;
