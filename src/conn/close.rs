//! How a visitor connection ends: by itself, or closed gracefully once it has been idle too
//! long ([`crate::conn::idle`]) or the server is shutting down. Graceful means what hyper's
//! `graceful_shutdown` does: HTTP/2 gets a GOAWAY (the client learns which streams were
//! processed and retries the rest elsewhere) and the open streams finish; HTTP/1.1 closes after
//! the exchange in progress. Dropping the connection instead would cut a request racing the
//! close and tell an HTTP/2 client nothing.
//!
//! The idle timer and the shutdown signal are polled only when one of them woke the
//! connection's task ([`OnWake`]), not on each of the wake-ups every request causes: 271
//! fewer instructions per cached hit, 802 per forward (`benches/instructions.sh`).

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio::sync::watch;

use crate::conn::idle;

/// Why a connection is being closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// Idle (see [`idle::Timeouts`]).
    Idle,
    /// The server is shutting down.
    Shutdown,
}

/// Resolves when the connection should close: the server's stop signal (`true`, or its sender
/// gone), or the idle timer. `stop` is borrowed: the server waits until every receiver is gone,
/// so the connection must hold its own until it has ended, not just until the signal.
pub async fn closing(
    stop: &mut watch::Receiver<bool>,
    activity: &idle::Activity,
    timeouts: idle::Timeouts,
) -> Why {
    tokio::select! {
        biased;
        _ = stop.wait_for(|stopping| *stopping) => Why::Shutdown,
        _ = idle::expired(activity, timeouts) => Why::Idle,
    }
}

/// Drives `conn` to its end. Once `closing` resolves, `close` is called on it once (hyper's
/// `graceful_shutdown`) and it is driven on: to its end when the server is shutting down (the
/// server bounds that wait by `server.shutdown_timeout`), at most `grace()` more when idle
/// (asked then: what the connection is doing at that moment decides it).
/// `None` when the grace ran out and the connection was dropped.
pub async fn drive<C: Future>(
    conn: C,
    close: impl FnOnce(Pin<&mut C>),
    closing: impl Future<Output = Why>,
    grace: impl FnOnce() -> Duration,
) -> Option<C::Output> {
    let mut conn = pin!(conn);
    let mut closing = pin!(OnWake::new(closing));
    let why = tokio::select! {
        biased;
        done = conn.as_mut() => return Some(done),
        why = closing.as_mut() => why,
    };
    close(conn.as_mut());
    match why {
        Why::Shutdown => Some(conn.await),
        Why::Idle => tokio::time::timeout(grace(), conn).await.ok(),
    }
}

/// A future polled only when it has woken its task (and on its first poll, to arm it), not on
/// every wake-up of the task it shares. Correct for any future: one that returned `Pending`
/// makes progress only after it has woken the waker it was given, here its own.
pub struct OnWake<F> {
    inner: Pin<Box<F>>,
    flag: Arc<Flag>,
}

/// The waker an [`OnWake`] polls its future with: notes the wake-up, then wakes the task.
struct Flag {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        // A poisoned lock only means a panic elsewhere; the waker inside is still good.
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

impl<F: Future> OnWake<F> {
    /// Wraps `inner`; the first poll polls it.
    pub fn new(inner: F) -> OnWake<F> {
        OnWake {
            inner: Box::pin(inner),
            flag: Arc::new(Flag {
                woken: AtomicBool::new(true),
                task: Mutex::new(None),
            }),
        }
    }
}

impl<F: Future> Future for OnWake<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        {
            // The task to wake, kept current (a task's waker seldom changes: compared, not
            // cloned, on each poll). Set before the flag is read, so no wake-up is missed.
            let mut task = this.flag.task.lock().unwrap_or_else(|e| e.into_inner());
            if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        if !this.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = Waker::from(this.flag.clone());
        this.inner.as_mut().poll(&mut Context::from_waker(&waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// The same idle and head timeouts.
    fn both(t: Duration) -> idle::Timeouts {
        idle::Timeouts { idle: t, head: t }
    }

    /// A future counting its polls, ready once `ready` is set (it wakes through a Notify).
    struct Counted<'a> {
        polls: &'a AtomicUsize,
        notified: Pin<Box<tokio::sync::futures::Notified<'a>>>,
    }

    impl Future for Counted<'_> {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            self.notified.as_mut().poll(cx)
        }
    }

    #[tokio::test]
    async fn a_wrapped_future_is_polled_only_when_it_woke() {
        let polls = AtomicUsize::new(0);
        let notify = tokio::sync::Notify::new();
        let mut wrapped = pin!(OnWake::new(Counted {
            polls: &polls,
            notified: Box::pin(notify.notified()),
        }));
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(wrapped.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::Relaxed), 1, "the first poll arms it");
        for _ in 0..10 {
            assert!(wrapped.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(
            polls.load(Ordering::Relaxed),
            1,
            "other wake-ups leave it alone"
        );
        notify.notify_waiters();
        assert!(wrapped.as_mut().poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn its_wake_up_wakes_the_task() {
        let notify = Arc::new(tokio::sync::Notify::new());
        let n = notify.clone();
        let waiter = tokio::spawn(async move { OnWake::new(n.notified_owned()).await });
        tokio::task::yield_now().await;
        notify.notify_waiters();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the task was not woken")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_then_given_a_grace() {
        let (_stop_tx, mut stop) = watch::channel(false);
        let activity = idle::Activity::default();
        let closed = AtomicBool::new(false);
        // A connection that would never end, and ignores being asked to close.
        let r = drive(
            std::future::pending::<()>(),
            |_| closed.store(true, Ordering::Relaxed),
            closing(&mut stop, &activity, both(Duration::from_secs(4))),
            || Duration::from_secs(1),
        )
        .await;
        assert!(closed.load(Ordering::Relaxed), "asked to close");
        assert_eq!(r, None, "dropped after its grace");
    }

    #[tokio::test]
    async fn a_stopping_server_closes_and_waits_for_the_end() {
        let (stop_tx, mut stop) = watch::channel(false);
        let activity = idle::Activity::default();
        let notify = tokio::sync::Notify::new();
        let conn = async {
            notify.notified().await;
            "done"
        };
        let driven = drive(
            conn,
            |_| notify.notify_one(),
            closing(&mut stop, &activity, both(Duration::from_secs(3600))),
            || Duration::ZERO,
        );
        let _ = stop_tx.send(true);
        assert_eq!(driven.await, Some("done"));
    }
}
