//! Begin/End (the .NET APM pattern): one async result per started
//! operation. Begin makes one and submits a request whose sink it is; the
//! completion stores the outcome, wakes any End waiting for it, and queues
//! the user's callback on the socket's loop; End takes the outcome.
//!
//! Results are pooled: a finished result whose last reference goes away is
//! reset and reused by a later Begin, so the hot path allocates nothing.
//! The user's callback is a type parameter (`Notify`), so the core stays
//! ignorant of what a C callback is.

use super::io::{OpKind, Outcome, Sink};
use super::socket::Socket;
use crate::error::{Error, Result};
use crate::runtime::{Deliver, EventLoop};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Calls the user's completion callback for the result with handle `id`.
pub trait Notify: Clone + Send + Sync + 'static {
    fn notify(&self, id: u64);
}

struct Inner<N> {
    kind: OpKind,
    socket: Option<Arc<Socket>>,
    callback: Option<N>,
    /// .NET's AsyncState: an opaque word handed back to the user.
    user_state: usize,
    completed: bool,
    synchronously: bool,
    outcome: Option<Outcome>,
    /// End has been called (the handle is gone).
    ended: bool,
    /// Threads blocked in `wait`: std's Condvar makes a futex call on every
    /// notify, so completions only notify when someone waits.
    waiters: u32,
}

pub struct AsyncResult<N: Notify> {
    id: AtomicU64,
    /// Parties still to finish with the result: End, and the callback's
    /// delivery when there is a callback. The last one returns it to the
    /// pool (a check of the reference count instead would race: each side
    /// may see the other's reference not yet dropped).
    holders: AtomicU8,
    pool: &'static Pool<N>,
    inner: Mutex<Inner<N>>,
    done: Condvar,
}

/// A free list of finished results.
pub struct Pool<N: Notify> {
    free: Mutex<Vec<Arc<AsyncResult<N>>>>,
}

/// Enough results for every operation in flight on a busy server; beyond
/// it, finished results are simply freed.
const POOL_LIMIT: usize = 4096;

impl<N: Notify> Pool<N> {
    pub const fn new() -> Self {
        Pool { free: Mutex::new(Vec::new()) }
    }

    /// A result ready for `start`.
    pub fn take(&'static self) -> Arc<AsyncResult<N>> {
        if let Some(ar) = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return ar;
        }
        Arc::new(AsyncResult {
            id: AtomicU64::new(0),
            holders: AtomicU8::new(0),
            pool: self,
            inner: Mutex::new(Inner {
                kind: OpKind::Send,
                socket: None,
                callback: None,
                user_state: 0,
                completed: false,
                synchronously: false,
                outcome: None,
                ended: false,
                waiters: 0,
            }),
            done: Condvar::new(),
        })
    }

    /// Takes back a result every party has finished with. A queue may
    /// still drop its clone a moment later; it no longer looks inside.
    fn give(&self, ar: Arc<AsyncResult<N>>) {
        {
            let mut inner = ar.lock();
            inner.socket = None;
            inner.callback = None;
            inner.outcome = None;
        }
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < POOL_LIMIT {
            free.push(ar);
        }
    }

    pub fn len(&self) -> usize {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<N: Notify> Default for Pool<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<N: Notify> AsyncResult<N> {
    fn lock(&self) -> MutexGuard<'_, Inner<N>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Prepares a (fresh or recycled) result for a new operation.
    pub fn start(&self, kind: OpKind, socket: Arc<Socket>, callback: Option<N>, user_state: usize) {
        self.holders.store(1 + callback.is_some() as u8, Ordering::Release);
        let mut inner = self.lock();
        *inner = Inner {
            kind,
            socket: Some(socket),
            callback,
            user_state,
            completed: false,
            synchronously: false,
            outcome: None,
            ended: false,
            waiters: 0,
        };
    }

    /// Records the handle id the callback will be given.
    pub fn set_id(&self, id: u64) {
        self.id.store(id, Ordering::Release);
    }

    pub fn kind(&self) -> OpKind {
        self.lock().kind
    }

    pub fn is_completed(&self) -> bool {
        self.lock().completed
    }

    pub fn completed_synchronously(&self) -> bool {
        self.lock().synchronously
    }

    pub fn user_state(&self) -> usize {
        self.lock().user_state
    }

    /// Waits up to `timeout` (None: forever) for completion; returns whether
    /// it completed. Refused on the loop thread that must complete it.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut inner = self.lock();
        if !inner.completed && inner.socket.as_ref().is_some_and(|s| s.event_loop().is_loop_thread()) {
            return Err(Error::invalid_operation(
                "waiting for this operation on its own loop's thread would deadlock: \
                 End it from its callback or from another thread",
            ));
        }
        inner.waiters += 1;
        while !inner.completed {
            match deadline {
                None => inner = self.done.wait(inner).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break;
                    }
                    inner = self.done.wait_timeout(inner, d - now).unwrap_or_else(|p| p.into_inner()).0;
                }
            }
        }
        inner.waiters -= 1;
        Ok(inner.completed)
    }

    /// Whether End may block here: false if not completed and this is the
    /// loop thread. Checked before End claims the result.
    pub fn may_wait_here(&self) -> bool {
        let inner = self.lock();
        inner.completed || !inner.socket.as_ref().is_some_and(|s| s.event_loop().is_loop_thread())
    }

    /// End: waits for completion, then hands over the outcome. A socket
    /// closed before End makes it `ObjectDisposed`, as .NET's End* throws
    /// for a disposed socket.
    pub fn end(self: Arc<Self>) -> Result<Outcome> {
        self.wait(None)?;
        let (outcome, socket) = {
            let mut inner = self.lock();
            inner.ended = true;
            (inner.outcome.take().unwrap_or_else(Outcome::aborted), inner.socket.clone())
        };
        // Asked with the result's lock released: completions take the
        // socket's lock and then the result's, never the other way round.
        let result = match socket {
            Some(s) if s.is_closed() => Err(Error::disposed(format!("socket {} has been closed", s.number()))),
            _ => Ok(outcome),
        };
        self.release();
        result
    }

    /// One party is done; the last one recycles the result.
    fn release(self: Arc<Self>) {
        if self.holders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.pool.give(self);
        }
    }
}

impl<N: Notify> AsyncResult<N> {
    /// Returns a result whose Begin failed (nothing was started) to the pool.
    pub fn discard(self: Arc<Self>) {
        self.lock().ended = true;
        self.pool.give(self);
    }
}

impl<N: Notify> Sink for AsyncResult<N> {
    fn complete(self: Arc<Self>, outcome: Outcome, synchronously: bool, event_loop: &EventLoop) {
        let (has_callback, waiters) = {
            let mut inner = self.lock();
            inner.outcome = Some(outcome);
            inner.completed = true;
            inner.synchronously = synchronously;
            (inner.callback.is_some(), inner.waiters)
        };
        if waiters > 0 {
            self.done.notify_all();
        }
        if has_callback {
            // Cannot fail: a socket's loop is sealed only after the socket
            // was closed, and a closed socket completes nothing new.
            let _ = event_loop.deliver(self);
        }
    }
}

impl<N: Notify> Deliver for AsyncResult<N> {
    fn deliver(self: Arc<Self>) {
        let callback = self.lock().callback.clone();
        if let Some(cb) = callback {
            cb.notify(self.id.load(Ordering::Acquire));
        }
        self.release();
    }
}
