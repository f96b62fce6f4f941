//! Idle connections: a stream wrapper that counts the reads and writes that move bytes, and a
//! timer that fires once the count has not changed for a while. A client that neither sends
//! nor reads (an idle HTTP/2 connection, a reader that stopped draining its window) is closed,
//! so it cannot hold a connection slot forever.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Resolves once `activity` (bumped by [`IdleIo`] whenever bytes move) has not changed for
/// `timeout`, give or take a quarter: it is sampled every quarter of the timeout, so the I/O
/// path only bumps a counter instead of reading the clock on every read and write.
pub async fn expired(activity: &AtomicU64, timeout: Duration) {
    let tick = (timeout / 4).max(Duration::from_millis(1));
    let mut seen = activity.load(Ordering::Relaxed);
    let mut quiet = Duration::ZERO;
    loop {
        tokio::time::sleep(tick).await;
        let now = activity.load(Ordering::Relaxed);
        if now == seen {
            quiet += tick;
            if quiet >= timeout {
                return;
            }
        } else {
            seen = now;
            quiet = Duration::ZERO;
        }
    }
}

/// A stream that counts the reads and writes that moved bytes.
pub struct IdleIo<S> {
    inner: S,
    activity: Arc<AtomicU64>,
}

impl<S> IdleIo<S> {
    /// Wraps `inner`, counting activity in `activity`.
    pub fn new(inner: S, activity: Arc<AtomicU64>) -> IdleIo<S> {
        IdleIo { inner, activity }
    }

    fn touch(&self) {
        self.activity.fetch_add(1, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
