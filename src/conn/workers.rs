//! Worker threads: one single-threaded Tokio runtime per core, the way nginx runs one worker
//! process per core. The accept loops hand each public connection to the worker holding the
//! fewest, and it stays there to its end. The upstream connections it opens are driven there
//! too, and the pool offers them to that worker first, so a request seldom crosses threads and
//! no scheduler steals work back and forth.
//!
//! Against one work-stealing runtime this forwards 5-9 % more requests per second on one core
//! (`benches/ab.sh`, faster in 12 of 12 turns; cached hits moved within the VM's noise): a
//! single-threaded runtime needs no atomic run queues and no wake-ups between threads. The
//! price is nginx's too: a connection that keeps its worker busy delays the other connections
//! on that worker.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch};

/// Task polls between two checks for new I/O events when a worker is busy (Tokio's default is
/// 61). A saturated worker then finishes the HTTP/2 streams it already accepted before it
/// reads new ones, instead of letting each new batch queue ahead of their writes: p99 of the
/// HTTP/2 bench (`benches/peers.sh`, case g) fell from 46-54 ms to 24-29 ms, nginx's level,
/// with requests/s unchanged. HTTP/1.1 (one request per connection at a time) and an idle
/// worker (it polls I/O whenever its queue is empty) are unaffected. Under full load a timer
/// may fire up to one such round late (1 000 polls: tens of ms), against timeouts of seconds.
const EVENT_INTERVAL: u32 = 1000;

/// How long a stopping worker waits for its blocking tasks (tamis starts none today).
const STOP_TIMEOUT: Duration = Duration::from_secs(1);

thread_local! {
    /// The index of the worker running on this thread; `usize::MAX` on any other thread.
    static CURRENT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The worker this code runs on, if any (the upstream pool prefers its connections).
pub fn current() -> Option<usize> {
    let i = CURRENT.with(Cell::get);
    (i != usize::MAX).then_some(i)
}

/// The worker threads of a server; dropping it stops them.
pub struct Workers {
    workers: Vec<Worker>,
    /// Dropped (or sent `true`) to stop every worker.
    stop: watch::Sender<bool>,
    /// Where to start looking for the least busy worker, so ties take turns.
    next: AtomicUsize,
}

struct Worker {
    handle: Handle,
    /// Connections running on it now.
    connections: Arc<AtomicUsize>,
    /// Resolves once its thread has dropped its runtime.
    done: Option<oneshot::Receiver<()>>,
}

/// Counts a connection on its worker for as long as the connection's task lives.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// Starts `n` worker threads (at least one); on any error the ones started are stopped.
    pub fn start(n: usize) -> io::Result<Workers> {
        let (stop, stopped) = watch::channel(false);
        let mut workers = Vec::with_capacity(n.max(1));
        for index in 0..n.max(1) {
            // Returning early drops `stop`, which stops the workers already started.
            workers.push(Worker::start(index, stopped.clone())?);
        }
        Ok(Workers {
            workers,
            stop,
            next: AtomicUsize::new(0),
        })
    }

    /// How many workers run.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Whether there are none (never, once started).
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Runs `task` to its end on the worker with the fewest connections. It is first polled
    /// there, so what it registers then (its socket, its timers) belongs to that worker.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.workers.len();
        let Some(worker) = (0..n)
            .map(|i| &self.workers[(start + i) % n])
            .min_by_key(|w| w.connections.load(Ordering::Relaxed))
        else {
            return;
        };
        worker.connections.fetch_add(1, Ordering::Relaxed);
        let counted = Counted(worker.connections.clone());
        worker.handle.spawn(async move {
            let _counted = counted;
            task.await;
        });
    }

    /// Stops every worker and waits until each has dropped its tasks (connections still open
    /// are closed).
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for w in &mut self.workers {
            if let Some(done) = w.done.take() {
                let _ = done.await;
            }
        }
    }
}

impl Worker {
    fn start(index: usize, mut stopped: watch::Receiver<bool>) -> io::Result<Worker> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .event_interval(EVENT_INTERVAL)
            .build()?;
        let handle = runtime.handle().clone();
        let (done_tx, done) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("tamis-worker-{index}"))
            .spawn(move || {
                CURRENT.with(|c| c.set(index));
                runtime.block_on(async {
                    // Ends on `true` or when the sender is dropped.
                    let _ = stopped.wait_for(|stop| *stop).await;
                });
                runtime.shutdown_timeout(STOP_TIMEOUT);
                let _ = done_tx.send(());
            })?;
        Ok(Worker {
            handle,
            connections: Arc::new(AtomicUsize::new(0)),
            done: Some(done),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spawns a task that reports its worker, then waits for `release` (or its drop).
    async fn parked(workers: &Workers, release: oneshot::Receiver<()>) -> Option<usize> {
        let (tx, rx) = oneshot::channel();
        workers.spawn(async move {
            let _ = tx.send(current());
            let _ = release.await;
        });
        rx.await.ok().flatten()
    }

    #[tokio::test]
    async fn each_task_runs_on_a_named_worker_thread() {
        let workers = Workers::start(2).unwrap();
        assert_eq!(workers.len(), 2);
        assert_eq!(current(), None, "the test's own thread is no worker");
        let (tx, rx) = oneshot::channel();
        workers.spawn(async move {
            let name = std::thread::current().name().map(str::to_owned);
            let _ = tx.send((current(), name));
        });
        let (index, name) = rx.await.unwrap();
        let index = index.expect("ran on a worker");
        assert_eq!(
            name.as_deref(),
            Some(format!("tamis-worker-{index}").as_str())
        );
        workers.stop().await;
    }

    #[tokio::test]
    async fn a_new_connection_goes_to_the_worker_holding_the_fewest() {
        let workers = Workers::start(2).unwrap();
        let mut releases = Vec::new();
        let mut on = Vec::new();
        for _ in 0..4 {
            let (tx, rx) = oneshot::channel();
            releases.push(tx);
            on.push(parked(&workers, rx).await.unwrap());
        }
        // Two each, whatever the order.
        assert_eq!(on.iter().filter(|&&w| w == 0).count(), 2, "{on:?}");
        // Worker 0's connections end: the next two both go there, not one each in turn.
        let (zero, mut releases): (Vec<_>, Vec<_>) =
            releases.into_iter().zip(&on).partition(|(_, &w)| w == 0);
        for (release, _) in zero {
            let _ = release.send(());
        }
        while workers.workers[0].connections.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut held = Vec::new();
        for _ in 0..2 {
            let (tx, rx) = oneshot::channel();
            held.push(tx);
            assert_eq!(parked(&workers, rx).await, Some(0));
        }
        releases.clear();
        workers.stop().await;
    }

    #[tokio::test]
    async fn stopping_closes_what_still_runs_on_the_workers() {
        let workers = Workers::start(1).unwrap();
        let (tx, mut rx) = oneshot::channel::<()>();
        let (started, running) = oneshot::channel();
        workers.spawn(async move {
            let _held = tx;
            let _ = started.send(());
            std::future::pending::<()>().await;
        });
        running.await.unwrap();
        assert!(rx
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Empty));
        workers.stop().await;
        assert!(rx.await.is_err(), "the task outlived its worker");
    }
}
