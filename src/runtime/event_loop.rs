//! One event loop: a poller, posted tasks, timers and the sources that
//! belong to it. Exactly one thread runs a loop at a time; any thread may
//! post to it, stop it or add timers.

use super::poller::{Events, Poller};
use super::sources::{Source, SourceKey, Sources};
use super::thread_token;
use super::timers::{TimerCallback, TimerId, TimerOutcome, Timers};
use crate::error::{Error, Result};
use crate::trace;
use crate::trace::{LEVEL_ERROR, LEVEL_INFO, LEVEL_VERBOSE};
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub type Task = Box<dyn FnOnce() + Send>;

/// A completed operation whose user callback is due. Delivering one through
/// the loop costs a reference count, not an allocation (a boxed closure
/// would cost one per operation).
pub trait Deliver: Send + Sync {
    fn deliver(self: Arc<Self>);
}

enum Job {
    Task(Task),
    Deliver(Arc<dyn Deliver>),
}

impl Job {
    fn run(self) {
        match self {
            Job::Task(task) => task(),
            Job::Deliver(d) => d.deliver(),
        }
    }
}

static NEXT_LOOP_NUMBER: AtomicU64 = AtomicU64::new(1);

#[derive(Default)]
struct RunState {
    /// Some thread owns the right to run the loop.
    claimed: bool,
    /// A stop was asked for while it was claimed: the owner is about to
    /// return, so a new run waits for it instead of failing.
    stopping: bool,
}

#[derive(Default)]
struct TaskQueue {
    queue: VecDeque<Job>,
    /// Set once the loop has been freed and drained: later posts fail.
    sealed: bool,
}

pub struct EventLoop {
    number: u64,
    poller: Poller,
    tasks: Mutex<TaskQueue>,
    timers: Mutex<Timers>,
    sources: Mutex<Sources>,
    /// A wake-up is on its way to the poller; later posters need not send one.
    wake_pending: AtomicBool,
    stop_requested: AtomicBool,
    /// `free` has begun: no new sources, timers or runs.
    closing: AtomicBool,
    /// Who may run the loop now (run, run_once, the library thread, or
    /// free's final drain).
    claimed: Mutex<RunState>,
    idle: Condvar,
    /// The token of the thread running the loop now, 0 when none.
    running_on: AtomicU64,
    thread: Mutex<Option<JoinHandle<()>>>,
    events: Mutex<Events>,
    /// The runner's second job buffer (see `run_posted`).
    spare: Mutex<VecDeque<Job>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data
    // half-updated in a way that matters more than stopping the loop would.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl EventLoop {
    pub fn new() -> Result<Arc<EventLoop>> {
        let poller = Poller::new().map_err(|e| Error::os(&e, "create poller"))?;
        let number = NEXT_LOOP_NUMBER.fetch_add(1, Ordering::Relaxed);
        trace!(LEVEL_INFO, "loop", "loop {number} created");
        Ok(Arc::new(EventLoop {
            number,
            poller,
            tasks: Mutex::default(),
            timers: Mutex::default(),
            sources: Mutex::default(),
            wake_pending: AtomicBool::new(false),
            stop_requested: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            claimed: Mutex::default(),
            idle: Condvar::new(),
            running_on: AtomicU64::new(0),
            thread: Mutex::new(None),
            events: Mutex::new(Events::new()),
            spare: Mutex::default(),
        }))
    }

    /// A number for traces and thread names.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Whether the calling thread is the one running this loop now. A call
    /// that would block waiting for this loop must not be made from it.
    #[inline]
    pub fn is_loop_thread(&self) -> bool {
        self.running_on.load(Ordering::Acquire) == thread_token::current()
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    fn disposed(&self) -> Error {
        Error::disposed(format!("loop {} has been freed", self.number))
    }

    // --- posting and waking ----------------------------------------------

    /// Queues `task` to run on the loop's thread. Tasks run in the order
    /// they were posted.
    pub fn post(&self, task: Task) -> Result<()> {
        self.push(Job::Task(task))
    }

    /// Queues an operation's callback. It shares the FIFO with posted tasks,
    /// so callbacks run in the order their operations completed.
    pub fn deliver(&self, d: Arc<dyn Deliver>) -> Result<()> {
        self.push(Job::Deliver(d))
    }

    fn push(&self, job: Job) -> Result<()> {
        {
            let mut q = lock(&self.tasks);
            if q.sealed {
                return Err(self.disposed());
            }
            q.queue.push_back(job);
        }
        self.wake();
        Ok(())
    }

    fn wake(&self) {
        // The loop drains its queue and re-reads its timers before it waits
        // again, so its own thread never needs to wake it.
        if self.is_loop_thread() {
            return;
        }
        if !self.wake_pending.swap(true, Ordering::SeqCst) {
            if let Err(e) = self.poller.notify() {
                trace!(LEVEL_ERROR, "loop", "loop {}: notify failed: {e}", self.number);
            }
        }
    }

    // --- timers -------------------------------------------------------------

    /// Calls `cb(Fired)` on the loop thread once `delay` has passed, or
    /// `cb(Cancelled)` if the timer is cancelled or the loop freed first.
    pub fn add_timer(&self, delay: Duration, cb: TimerCallback) -> Result<TimerId> {
        let deadline =
            Instant::now().checked_add(delay).ok_or_else(|| Error::out_of_range("timer delay is too large"))?;
        let id = {
            // Checked under the timers lock: `close` seals timers and tasks
            // together under it, so a timer is either refused here or run
            // (cancelled) by the close.
            let mut timers = lock(&self.timers);
            if timers.sealed {
                return Err(self.disposed());
            }
            timers.add(deadline, cb)
        };
        self.wake();
        Ok(id)
    }

    /// Cancels a timer that has not fired. Its callback then runs with
    /// `Cancelled` on the loop thread (never inside this call). Returns false
    /// when the timer already fired or was cancelled.
    pub fn cancel_timer(&self, id: TimerId) -> bool {
        let mut timers = lock(&self.timers);
        match timers.cancel(id) {
            Some(cb) => {
                // Posted while the timers lock is held: the task queue is
                // sealed only under that lock, once no timer is left, so it
                // cannot be sealed now.
                let posted = self.post(Box::new(move || cb(TimerOutcome::Cancelled)));
                debug_assert!(posted.is_ok());
                true
            }
            None => false,
        }
    }

    // --- sources ------------------------------------------------------------

    /// Makes `source` belong to this loop (it is closed when the loop is
    /// freed). Registration with the poller is separate: see `watch`.
    pub fn attach(&self, source: Weak<dyn Source>) -> Result<SourceKey> {
        // Checked under the sources lock: `close` sets `closing` before it
        // takes this lock to list the sources, so a source either sees
        // `closing` here or is in that list.
        let mut sources = lock(&self.sources);
        if self.is_closing() {
            return Err(self.disposed());
        }
        Ok(sources.insert(source))
    }

    /// Registers `fd` with the poller for both directions, once, for the
    /// rest of the source's life.
    pub fn watch(&self, key: SourceKey, fd: RawFd) -> Result<()> {
        if !lock(&self.sources).set_fd(key, fd) {
            return Err(Error::disposed("the socket has been closed"));
        }
        self.poller.add(fd, key.as_poller_key()).map_err(|e| Error::os(&e, "register with poller"))
    }

    /// Deregisters a source's descriptor (it is about to be replaced) but
    /// keeps the source on the loop. Call before the descriptor is closed.
    pub fn unwatch(&self, key: SourceKey) {
        let fd = lock(&self.sources).take_fd(key);
        if let Some(fd) = fd {
            let _ = self.poller.delete(fd);
        }
    }

    /// Removes a source whose descriptor is closed right after, which takes
    /// it out of the poller by itself: no `EPOLL_CTL_DEL` needed. Off Linux
    /// the registration is deleted as usual.
    pub fn detach_closing(&self, key: SourceKey) {
        if cfg!(target_os = "linux") {
            lock(&self.sources).remove(key);
        } else {
            self.detach(key);
        }
    }

    /// Removes a source. Call before its descriptor is closed.
    pub fn detach(&self, key: SourceKey) {
        let removed = lock(&self.sources).remove(key);
        if let Some(Some(fd)) = removed {
            let _ = self.poller.delete(fd);
        }
    }

    pub fn source_count(&self) -> usize {
        lock(&self.sources).len()
    }

    // --- running ------------------------------------------------------------

    /// Waits while the current owner is stopping (so stop-then-run or
    /// stop-then-start_thread from another thread is deterministic), then
    /// returns the state for the caller to claim.
    fn wait_unless_stopping<'a>(&self, mut st: MutexGuard<'a, RunState>) -> MutexGuard<'a, RunState> {
        while st.claimed && st.stopping && !self.is_loop_thread() {
            st = self.idle.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st
    }

    fn claim(&self) -> Result<()> {
        let mut st = self.wait_unless_stopping(lock(&self.claimed));
        if self.is_closing() {
            return Err(self.disposed());
        }
        if st.claimed {
            return Err(Error::invalid_operation(if self.is_loop_thread() {
                format!("loop {} is already running on this thread (a callback cannot run its own loop)", self.number)
            } else {
                format!("loop {} is already running on another thread", self.number)
            }));
        }
        st.claimed = true;
        self.running_on.store(thread_token::current(), Ordering::Release);
        Ok(())
    }

    fn release(&self) {
        let mut st = lock(&self.claimed);
        self.running_on.store(0, Ordering::Release);
        st.claimed = false;
        st.stopping = false;
        self.idle.notify_all();
    }

    /// Runs the loop on the calling thread until `stop`.
    pub fn run(&self) -> Result<()> {
        self.claim()?;
        let result = self.run_claimed();
        self.release();
        result
    }

    fn run_claimed(&self) -> Result<()> {
        trace!(LEVEL_INFO, "loop", "loop {} running", self.number);
        loop {
            self.iterate(None)?;
            if self.stop_requested.swap(false, Ordering::AcqRel) {
                trace!(LEVEL_INFO, "loop", "loop {} stopped", self.number);
                return Ok(());
            }
        }
    }

    /// One turn of the loop: waits at most `timeout` (None: until something
    /// happens) and returns how many callbacks it ran.
    pub fn run_once(&self, timeout: Option<Duration>) -> Result<u32> {
        self.claim()?;
        let result = self.iterate(timeout);
        self.release();
        result
    }

    /// Runs the loop on a thread the library owns, until `stop` or `free`.
    pub fn start_thread(self: &Arc<Self>) -> Result<()> {
        {
            let mut st = self.wait_unless_stopping(lock(&self.claimed));
            if self.is_closing() {
                return Err(self.disposed());
            }
            if st.claimed {
                return Err(Error::invalid_operation(format!("loop {} is already running", self.number)));
            }
            st.claimed = true;
        }
        let mut slot = lock(&self.thread);
        if let Some(old) = slot.take() {
            // The previous library thread has released the loop, so it is
            // at most a few instructions from its end.
            let _ = old.join();
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new().name(format!("asock-loop-{}", self.number)).spawn(move || {
            me.running_on.store(thread_token::current(), Ordering::Release);
            if let Err(e) = me.run_claimed() {
                trace!(LEVEL_ERROR, "loop", "loop {} thread ended: {e}", me.number);
            }
            me.release();
        });
        match spawned {
            Ok(handle) => {
                *slot = Some(handle);
                Ok(())
            }
            Err(e) => {
                drop(slot);
                self.release();
                Err(Error::os(&e, "start loop thread"))
            }
        }
    }

    /// Asks the running loop to return after its current turn. If no thread
    /// runs it, the next run returns after one turn (as libuv's uv_stop).
    pub fn stop(&self) {
        {
            let mut st = lock(&self.claimed);
            self.stop_requested.store(true, Ordering::Release);
            if st.claimed {
                st.stopping = true;
            }
        }
        // Wake even from the loop thread: a sleeping waiter elsewhere is not
        // possible then, but the flag must be seen before the next wait.
        if !self.wake_pending.swap(true, Ordering::SeqCst) {
            let _ = self.poller.notify();
        }
    }

    fn wait_timeout(&self, user: Option<Duration>) -> Option<Duration> {
        if !lock(&self.tasks).queue.is_empty() || self.stop_requested.load(Ordering::Acquire) {
            return Some(Duration::ZERO);
        }
        let timer = lock(&self.timers).next_deadline().map(|d| d.saturating_duration_since(Instant::now()));
        match (user, timer) {
            (Some(u), Some(t)) => Some(u.min(t)),
            (u, t) => u.or(t),
        }
    }

    fn iterate(&self, user_timeout: Option<Duration>) -> Result<u32> {
        let mut dispatched = 0u32;
        let timeout = self.wait_timeout(user_timeout);
        {
            let mut events = lock(&self.events);
            self.poller.wait(&mut events, timeout).map_err(|e| Error::os(&e, "wait for events"))?;
            for ev in events.iter() {
                let found = lock(&self.sources).get(ev.key as u64);
                let Some((weak, fd)) = found else {
                    trace!(LEVEL_VERBOSE, "loop", "loop {}: dropped stale event for key {:#x}", self.number, ev.key);
                    continue;
                };
                if let Some(source) = weak.upgrade() {
                    guarded(|| source.on_ready(ev.readable, ev.writable, ev.hangup));
                    dispatched += 1;
                    if self.poller.needs_rearm() {
                        if let Some(fd) = fd {
                            let _ = self.poller.rearm(fd, ev.key);
                        }
                    }
                }
            }
        }
        let due = lock(&self.timers).take_due(Instant::now());
        for cb in due {
            guarded(|| cb(TimerOutcome::Fired));
            dispatched += 1;
        }
        dispatched += self.run_posted();
        Ok(dispatched)
    }

    /// Runs posted jobs until the queue is empty, so a callback that starts
    /// an operation which completes at once (its callback queued from this
    /// thread) is served in the same turn, not after another wait. The
    /// rounds are bounded: a job that re-posts itself forever still lets the
    /// loop poll for I/O.
    fn run_posted(&self) -> u32 {
        const MAX_ROUNDS: usize = 64;
        self.wake_pending.store(false, Ordering::SeqCst);
        let mut n = 0;
        // The runner's spare buffer is swapped with the queue (both keep
        // their capacity), so a steady stream of jobs allocates nothing.
        let mut batch = std::mem::take(&mut *lock(&self.spare));
        for _ in 0..MAX_ROUNDS {
            std::mem::swap(&mut batch, &mut lock(&self.tasks).queue);
            if batch.is_empty() {
                break;
            }
            n += batch.len() as u32;
            while let Some(job) = batch.pop_front() {
                guarded(|| job.run());
            }
        }
        *lock(&self.spare) = batch;
        n
    }

    // --- freeing ------------------------------------------------------------

    /// Frees the loop: stops it, waits for whoever runs it to return, closes
    /// every source (each completes its pending operations), then runs what
    /// is left — posted tasks, and every unfired timer with `Cancelled` — on
    /// the calling thread, which acts as the loop thread meanwhile.
    pub fn close(&self) -> Result<()> {
        if self.is_loop_thread() {
            return Err(Error::invalid_operation(format!(
                "loop {} cannot be freed from its own thread; stop it and free it from another",
                self.number
            )));
        }
        if self.closing.swap(true, Ordering::AcqRel) {
            return Err(self.disposed());
        }
        self.stop();
        {
            let mut st = lock(&self.claimed);
            while st.claimed {
                st = self.idle.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            st.claimed = true;
            self.running_on.store(thread_token::current(), Ordering::Release);
        }
        if let Some(handle) = lock(&self.thread).take() {
            let _ = handle.join();
        }
        let live = lock(&self.sources).live();
        for source in live.iter().filter_map(Weak::upgrade) {
            guarded(|| source.on_loop_closed());
        }
        loop {
            let (timers, batch) = {
                // Timers, then tasks: the lock order of `cancel_timer`.
                let mut timers = lock(&self.timers);
                let mut q = lock(&self.tasks);
                if timers.is_empty() && q.queue.is_empty() {
                    timers.sealed = true;
                    q.sealed = true;
                    break;
                }
                (timers.take_all(), std::mem::take(&mut q.queue))
            };
            for cb in timers {
                guarded(|| cb(TimerOutcome::Cancelled));
            }
            for job in batch {
                guarded(|| job.run());
            }
        }
        self.release();
        trace!(LEVEL_INFO, "loop", "loop {} freed", self.number);
        Ok(())
    }
}

/// A panic in one callback must not take the loop thread down with it.
fn guarded(f: impl FnOnce()) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(f)) {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        trace!(LEVEL_ERROR, "loop", "a callback panicked: {what}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;

    #[test]
    fn posts_run_in_order_on_run_once() {
        let l = EventLoop::new().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        for i in 0..5 {
            let s = seen.clone();
            l.post(Box::new(move || s.lock().unwrap().push(i))).unwrap();
        }
        assert_eq!(l.run_once(Some(Duration::from_millis(1000))).unwrap(), 5);
        assert_eq!(*seen.lock().unwrap(), vec![0, 1, 2, 3, 4]);
        l.close().unwrap();
    }

    #[test]
    fn timers_fire_in_deadline_order_and_cancel_reports_once() {
        let l = EventLoop::new().unwrap();
        let (tx, rx) = mpsc::channel();
        for (name, ms) in [("b", 20u64), ("a", 5)] {
            let tx = tx.clone();
            l.add_timer(Duration::from_millis(ms), Box::new(move |o| tx.send((name, o)).unwrap())).unwrap();
        }
        let tx2 = tx.clone();
        let c = l.add_timer(Duration::from_secs(3600), Box::new(move |o| tx2.send(("c", o)).unwrap())).unwrap();
        assert!(l.cancel_timer(c));
        assert!(!l.cancel_timer(c));
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < 3 && Instant::now() < deadline {
            l.run_once(Some(Duration::from_millis(100))).unwrap();
            got.extend(rx.try_iter());
        }
        assert_eq!(got, vec![("c", TimerOutcome::Cancelled), ("a", TimerOutcome::Fired), ("b", TimerOutcome::Fired)]);
        l.close().unwrap();
    }

    #[test]
    fn free_cancels_timers_and_runs_posts_then_rejects() {
        let l = EventLoop::new().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        l.add_timer(
            Duration::from_secs(3600),
            Box::new(move |o| {
                assert_eq!(o, TimerOutcome::Cancelled);
                c.fetch_add(1, Ordering::SeqCst);
            }),
        )
        .unwrap();
        let c = count.clone();
        l.post(Box::new(move || {
            c.fetch_add(10, Ordering::SeqCst);
        }))
        .unwrap();
        l.close().unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 11);
        assert_eq!(l.post(Box::new(|| {})).unwrap_err().code(), ASOCK_E_OBJECT_DISPOSED);
        assert_eq!(l.run_once(Some(Duration::ZERO)).unwrap_err().code(), ASOCK_E_OBJECT_DISPOSED);
        assert_eq!(l.close().unwrap_err().code(), ASOCK_E_OBJECT_DISPOSED);
    }

    #[test]
    fn library_thread_runs_posts_and_stops() {
        let l = EventLoop::new().unwrap();
        l.start_thread().unwrap();
        assert_eq!(l.start_thread().unwrap_err().code(), ASOCK_E_INVALID_OPERATION);
        assert_eq!(l.run_once(Some(Duration::ZERO)).unwrap_err().code(), ASOCK_E_INVALID_OPERATION);
        let (tx, rx) = mpsc::channel();
        let l2 = l.clone();
        l.post(Box::new(move || tx.send(l2.is_loop_thread()).unwrap())).unwrap();
        assert!(rx.recv_timeout(Duration::from_secs(10)).unwrap());
        assert!(!l.is_loop_thread());
        l.close().unwrap();
    }

    #[test]
    fn nested_run_from_callback_is_refused() {
        let l = EventLoop::new().unwrap();
        let l2 = l.clone();
        let (tx, rx) = mpsc::channel();
        l.post(Box::new(move || {
            tx.send((l2.run_once(Some(Duration::ZERO)).unwrap_err().code(), l2.close().unwrap_err().code())).unwrap();
        }))
        .unwrap();
        l.run_once(Some(Duration::from_secs(1))).unwrap();
        assert_eq!(rx.recv().unwrap(), (ASOCK_E_INVALID_OPERATION, ASOCK_E_INVALID_OPERATION));
        l.close().unwrap();
    }

    struct Probe {
        hits: AtomicUsize,
        closed: AtomicUsize,
    }
    impl Source for Probe {
        fn on_ready(&self, _r: bool, _w: bool, _h: bool) {
            self.hits.fetch_add(1, Ordering::SeqCst);
        }
        fn on_loop_closed(&self) {
            self.closed.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// An event fetched for a source that was detached (its descriptor
    /// closed, the number reused by a new source) reaches nobody.
    #[test]
    fn stale_key_never_reaches_new_owner_of_reused_fd() {
        use std::os::fd::AsRawFd;
        let l = EventLoop::new().unwrap();
        let old: Arc<dyn Source> = Arc::new(Probe { hits: AtomicUsize::new(0), closed: AtomicUsize::new(0) });
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let old_fd = a.as_raw_fd();
        let old_key = l.attach(Arc::downgrade(&old)).unwrap();
        l.watch(old_key, old_fd).unwrap();
        l.detach(old_key);
        drop(a);
        let probe = Arc::new(Probe { hits: AtomicUsize::new(0), closed: AtomicUsize::new(0) });
        let new: Arc<dyn Source> = probe.clone();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // The kernel usually hands out `old_fd` again; other tests running in
        // parallel may take it first, and the key check below does not care.
        let new_key = l.attach(Arc::downgrade(&new)).unwrap();
        assert_eq!(new_key.0 & 0xFFFF_FFFF, old_key.0 & 0xFFFF_FFFF, "same slot");
        assert_ne!(new_key, old_key);
        // The stale key finds nothing; the live one finds the new source.
        assert!(lock(&l.sources).get(old_key.0).is_none());
        assert!(lock(&l.sources).get(new_key.0).is_some());
        l.watch(new_key, b.as_raw_fd()).unwrap();
        // Edge registration reports the socket writable once.
        let deadline = Instant::now() + Duration::from_secs(5);
        while probe.hits.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            l.run_once(Some(Duration::from_millis(100))).unwrap();
        }
        assert_eq!(probe.hits.load(Ordering::SeqCst), 1);
        l.close().unwrap();
        assert_eq!(probe.closed.load(Ordering::SeqCst), 1);
    }
}
