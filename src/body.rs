//! Response bodies: a cached `Bytes` (hits, buffered misses) or an upstream body streamed
//! through, with an idle timeout so a stalled upstream cannot hold a visitor forever.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Either, Full};
use prometheus::IntCounter;
use tokio::time::{Instant, Sleep};

use crate::conn::idle::Open;
use crate::upstream::UpstreamBody;

/// What tamis answers with. A streamed body is boxed: inline it would make every response
/// (cached hits included) several times the size of a complete body's, and a response is
/// moved whole from one step to the next (as is every future that holds one).
pub type ProxyBody = Either<Full<Bytes>, Box<Streamed>>;

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
    rest: Option<UpstreamBody>,
    idle: Duration,
    /// Armed the first time the upstream makes us wait (a body already read needs none).
    timer: Option<Pin<Box<Sleep>>>,
    /// Counts the bytes sent (`tamis_served_bytes_total{result="upstream"}`).
    sent: IntCounter,
    /// Keeps the visitor's connection from counting as idle until the body is done.
    open: Option<Open>,
}

impl Streamed {
    /// Streams `prefix` then `rest`, failing if `rest` stays silent for `idle`.
    pub fn new(
        prefix: Vec<Bytes>,
        rest: Option<UpstreamBody>,
        idle: Duration,
        sent: IntCounter,
    ) -> Streamed {
        Streamed {
            prefix: prefix.into(),
            rest,
            idle,
            timer: None,
            sent,
            open: None,
        }
    }

    /// Holds the request's place in its connection's activity until this body is done.
    pub fn hold(&mut self, open: Open) {
        self.open = Some(open);
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
                if let Some(timer) = this.timer.as_mut() {
                    timer.as_mut().reset(Instant::now() + this.idle);
                }
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
            Poll::Pending => match this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(this.idle)))
                .as_mut()
                .poll(cx)
            {
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

/// Why a body could not be read into memory.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    #[error("body unreadable: {0}")]
    Failed(String),
}

/// Reads a whole body of at most `max` bytes. A body in one frame (the usual small POST) is
/// kept as it is, without the queue and the copy a general collect makes.
pub async fn read_limited<B>(body: B, max: usize) -> Result<Bytes, ReadError>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    use http_body_util::BodyExt as _;
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut more: Vec<u8> = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReadError::Failed(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total > max {
            return Err(ReadError::TooLarge(max));
        }
        match first.take() {
            None if more.is_empty() => first = Some(data),
            prev => {
                if let Some(prev) = prev {
                    more.extend_from_slice(&prev);
                }
                more.extend_from_slice(&data);
            }
        }
        // A body whose declared length has all arrived (a small POST: one frame) is known to
        // be over without another poll to say so.
        if body.is_end_stream() {
            break;
        }
    }
    Ok(match first {
        Some(only) => only,
        None => Bytes::from(more),
    })
}
pub(crate) enum Buffered {
    Complete(Bytes),
    /// Over the limit: what was read so far, and the rest still to stream.
    TooLarge(Vec<Bytes>, UpstreamBody),
}

/// Reads a body into memory unless it grows past `max`.
pub(crate) async fn buffer(mut body: UpstreamBody, max: u64) -> Result<Buffered, hyper::Error> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        total += data.len() as u64;
        chunks.push(data);
        if total > max {
            return Ok(Buffered::TooLarge(chunks, body));
        }
    }
    // Always one exact-size allocation: a chunk can be a slice of a larger read buffer, and
    // keeping it would pin that whole buffer in the cache for the entry's lifetime.
    let mut all = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for c in &chunks {
        all.extend_from_slice(c);
    }
    Ok(Buffered::Complete(Bytes::from(all)))
}

pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// A short plain-text answer that no cache keeps.
pub fn error_response(status: StatusCode, message: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(full(Bytes::from_static(message.as_bytes())));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Like every answer: never read as anything but the text it is (a quirks-mode page would
    // apply any same-origin body as a stylesheet otherwise).
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    /// One data frame, then a panic if it is polled again: its end is told by `is_end_stream`.
    struct OneFrame(Option<Bytes>);

    impl Body for OneFrame {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            match self.0.take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => panic!("polled after its end"),
            }
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_none()
        }
    }

    #[tokio::test]
    async fn a_body_known_to_be_over_is_not_polled_again() {
        let body = OneFrame(Some(Bytes::from_static(b"{\"n\":\"pageview\"}")));
        let read = read_limited(body, 1024).await.unwrap();
        assert_eq!(&read[..], b"{\"n\":\"pageview\"}");
        let body = OneFrame(Some(Bytes::from_static(b"too long")));
        assert!(matches!(
            read_limited(body, 3).await,
            Err(ReadError::TooLarge(3))
        ));
    }
}
