//! Idle connections: counters of what a connection does (bytes moved and writes that had to
//! wait, by a stream wrapper; requests begun and still open, by a guard that lives as long as
//! the request's handling or its streamed body), and a timer that fires once they show it has
//! done nothing for a while. A client that neither sends nor reads (a reader that stopped
//! draining its window) is closed, and so is one that keeps bytes moving without asking for
//! anything (an HTTP/2 connection that only pings, a preface trickled in byte by byte), so
//! neither can hold a connection slot forever.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What one connection has been doing, counted where it happens and sampled by [`expired`].
#[derive(Debug, Default)]
pub struct Activity {
    /// Reads and writes that moved bytes.
    bytes: AtomicU64,
    /// Requests begun.
    begun: AtomicU64,
    /// Requests being handled, or whose streamed body is not done yet.
    open: AtomicU64,
    /// A write had to wait for the client since the timer last looked: an answer is still
    /// going out to a slow reader (a complete body leaves its request before it leaves us).
    blocked: AtomicBool,
    /// It speaks HTTP/2 (by ALPN, or a request said so): it may wait for requests as long as
    /// it is idle, not only as long as a head may take.
    http2: AtomicBool,
}

impl Activity {
    /// Counts a request as begun, and as open until the returned guard drops: hand it to a
    /// streamed response body (`body::Streamed::hold`), so a body the upstream is still
    /// sending counts as open until its last byte.
    pub fn begin(self: &Arc<Activity>) -> Open {
        self.begun.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        Open(self.clone())
    }

    /// Marks the connection as HTTP/2 (see [`Timeouts`]).
    pub fn http2(&self) {
        self.http2.store(true, Ordering::Relaxed);
    }
}

/// How long a connection may go without a request.
///
/// An HTTP/1.1 connection gets `head` (`limits.header_read_timeout`) from its start or its
/// last request to the next head: that is the slowloris guard (a head trickled in a byte at a
/// time never begins a request) and the keep-alive wait, as nginx's `client_header_timeout`.
/// hyper has the same guard, but it allocates a timer and puts it in and out of tokio's timer
/// wheel on every request (about 650 instructions and an allocation per cached hit,
/// `benches/instructions.sh`); the sampler below was already running. An HTTP/2 connection,
/// which a browser keeps for the next page, waits as long as `idle` allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// `limits.idle_timeout`: nothing moving, or no request.
    pub idle: Duration,
    /// `limits.header_read_timeout`: no request on an HTTP/1.1 connection.
    pub head: Duration,
}

impl Timeouts {
    /// How often the counters are sampled: a quarter of the shorter timeout.
    pub fn tick(&self) -> Duration {
        (self.idle.min(self.head) / 4).max(Duration::from_millis(1))
    }

    /// How long a connection closed for being idle has to finish: a request under way (one
    /// that raced the close) or an HTTP/2 connection's streams get a quarter of the idle
    /// timeout, as before the head timeout moved here; an HTTP/1.1 connection with none was
    /// waiting for a head (perhaps a trickled one, which hyper keeps reading after a graceful
    /// close), and gets one tick.
    pub fn grace(&self, activity: &Activity) -> Duration {
        if activity.http2.load(Ordering::Relaxed) || activity.open.load(Ordering::Relaxed) > 0 {
            self.idle / 4
        } else {
            self.tick()
        }
    }

    /// How long `activity`'s connection may go without a request.
    fn unused(&self, activity: &Activity) -> Duration {
        if activity.http2.load(Ordering::Relaxed) {
            self.idle
        } else {
            self.head.min(self.idle)
        }
    }
}

/// An open request, closed on drop.
#[derive(Debug)]
pub struct Open(Arc<Activity>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resolves once the connection has been idle: no bytes moved either way for `idle`, or no
/// request begun, open, or still being written out for as long as [`Timeouts`] allows its
/// protocol. Give or take a quarter: the counters are sampled every [`Timeouts::tick`], so
/// the I/O path only bumps a counter instead of reading the clock on every read and write.
pub async fn expired(activity: &Activity, timeouts: Timeouts) {
    let tick = timeouts.tick();
    let mut bytes_seen = activity.bytes.load(Ordering::Relaxed);
    let mut begun_seen = activity.begun.load(Ordering::Relaxed);
    let (mut quiet, mut unused) = (Duration::ZERO, Duration::ZERO);
    loop {
        tokio::time::sleep(tick).await;
        let bytes = activity.bytes.load(Ordering::Relaxed);
        let begun = activity.begun.load(Ordering::Relaxed);
        let open = activity.open.load(Ordering::Relaxed);
        let blocked = activity.blocked.swap(false, Ordering::Relaxed);
        quiet = if bytes == bytes_seen {
            quiet + tick
        } else {
            Duration::ZERO
        };
        unused = if begun == begun_seen && open == 0 && !blocked {
            unused + tick
        } else {
            Duration::ZERO
        };
        (bytes_seen, begun_seen) = (bytes, begun);
        if quiet >= timeouts.idle || unused >= timeouts.unused(activity) {
            return;
        }
    }
}

/// A stream that counts the reads and writes that moved bytes, and the writes that had to wait.
pub struct IdleIo<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> IdleIo<S> {
    /// Wraps `inner`, counting in `activity`.
    pub fn new(inner: S, activity: Arc<Activity>) -> IdleIo<S> {
        IdleIo { inner, activity }
    }

    fn touch(&self) {
        self.activity.bytes.fetch_add(1, Ordering::Relaxed);
    }

    fn wrote(&self, r: &Poll<io::Result<usize>>) {
        match r {
            Poll::Ready(Ok(n)) if *n > 0 => self.touch(),
            Poll::Pending => self.activity.blocked.store(true, Ordering::Relaxed),
            _ => {}
        }
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
        self.wrote(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&r);
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

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(8);

    /// The idle and head timeouts both `TIMEOUT`.
    const SAME: Timeouts = Timeouts {
        idle: TIMEOUT,
        head: TIMEOUT,
    };

    /// Heads within 2 s, 8 s idle.
    const SHORT_HEADS: Timeouts = Timeouts {
        idle: TIMEOUT,
        head: Duration::from_secs(2),
    };

    /// Runs `expired` beside `traffic` (which acts on the counters every second) for up to
    /// four timeouts of paused time; returns when it fired, if it did.
    async fn fires_after(
        activity: Arc<Activity>,
        traffic: impl Fn(&Arc<Activity>, &mut Option<Open>, u32),
    ) -> Option<Duration> {
        fires_within(SAME, activity, traffic).await
    }

    async fn fires_within(
        timeouts: Timeouts,
        activity: Arc<Activity>,
        traffic: impl Fn(&Arc<Activity>, &mut Option<Open>, u32),
    ) -> Option<Duration> {
        let start = tokio::time::Instant::now();
        let watch = expired(&activity, timeouts);
        tokio::pin!(watch);
        let mut open = None;
        for second in 0..32 {
            traffic(&activity, &mut open, second);
            tokio::select! {
                _ = &mut watch => return Some(start.elapsed()),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        None
    }

    fn bytes(a: &Activity) {
        a.bytes.fetch_add(1, Ordering::Relaxed);
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_without_a_request_do_not_keep_a_connection() {
        let fired = fires_after(Arc::default(), |a, _, _| bytes(a)).await;
        assert!(
            fired.is_some_and(|t| t >= TIMEOUT && t <= TIMEOUT * 5 / 4),
            "{fired:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_response_that_moves_bytes_keeps_it() {
        let fired = fires_after(Arc::default(), |a, open, second| {
            if second == 0 {
                *open = Some(a.begin());
            }
            bytes(a);
        })
        .await;
        assert_eq!(fired, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_still_taking_a_finished_answer_keeps_it() {
        let fired = fires_after(Arc::default(), |a, _, second| {
            if second == 0 {
                drop(a.begin());
            }
            // The answer left its request at once; the client takes it slowly.
            bytes(a);
            a.blocked.store(true, Ordering::Relaxed);
        })
        .await;
        assert_eq!(fired, None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_request_with_no_bytes_moving_does_not() {
        let fired = fires_after(Arc::default(), |a, open, second| {
            if second == 0 {
                *open = Some(a.begin());
            }
        })
        .await;
        assert!(fired.is_some_and(|t| t <= TIMEOUT * 5 / 4), "{fired:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn short_requests_now_and_then_keep_it() {
        let fired = fires_after(Arc::default(), |a, _, second| {
            // One request every 5 s (under the 8 s timeout), answered at once.
            if second % 5 == 0 {
                drop(a.begin());
            }
            bytes(a);
        })
        .await;
        assert_eq!(fired, None);
    }

    /// Slowloris on HTTP/1.1: bytes keep coming, no head ends; and a kept-alive connection
    /// waiting for its next head: both closed by the head timeout, long before the idle one.
    #[tokio::test(start_paused = true)]
    async fn an_http1_connection_waits_for_a_head_no_longer_than_the_head_timeout() {
        let head = SHORT_HEADS.head;
        let trickled = fires_within(SHORT_HEADS, Arc::default(), |a, _, _| bytes(a)).await;
        assert!(
            trickled.is_some_and(|t| t >= head && t <= head * 5 / 4),
            "{trickled:?}"
        );
        let kept_alive = fires_within(SHORT_HEADS, Arc::default(), |a, _, second| {
            if second == 0 {
                drop(a.begin());
                bytes(a);
            }
        })
        .await;
        assert!(
            kept_alive.is_some_and(|t| t >= head && t <= head * 7 / 4),
            "{kept_alive:?}"
        );
        // A request every second (under the head timeout) keeps it.
        let busy = fires_within(SHORT_HEADS, Arc::default(), |a, _, _| {
            drop(a.begin());
            bytes(a);
        })
        .await;
        assert_eq!(busy, None);
    }

    /// An HTTP/2 connection (a browser keeps it for the next page) waits for the idle timeout.
    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_waits_for_requests_as_long_as_the_idle_timeout() {
        let a = Arc::new(Activity::default());
        a.http2();
        let fired = fires_within(SHORT_HEADS, a, |a, _, second| {
            if second == 0 {
                drop(a.begin());
            }
            bytes(a);
        })
        .await;
        assert!(
            fired.is_some_and(|t| t >= TIMEOUT && t <= TIMEOUT * 5 / 4),
            "{fired:?}"
        );
    }

    /// A closed connection's grace: short for an HTTP/1.1 one waiting for a head (a trickled
    /// head must not hold it for a quarter of the idle timeout), long for a request under way
    /// or an HTTP/2 connection's streams.
    #[test]
    fn the_grace_is_short_only_for_a_connection_waiting_for_a_head() {
        let a = Arc::new(Activity::default());
        assert_eq!(SHORT_HEADS.grace(&a), SHORT_HEADS.tick());
        let open = a.begin();
        assert_eq!(SHORT_HEADS.grace(&a), TIMEOUT / 4);
        drop(open);
        assert_eq!(SHORT_HEADS.grace(&a), SHORT_HEADS.tick());
        a.http2();
        assert_eq!(SHORT_HEADS.grace(&a), TIMEOUT / 4);
    }
}
