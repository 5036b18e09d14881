//! SocketAsyncEventArgs (seed 001): reusable operation objects.
//!
//! An `EventArgs` carries an operation's inputs (buffer or buffer list,
//! remote endpoint, AcceptSocket, flags, user token) and, once it completes,
//! its results. Its operations go through the same per-socket queues as
//! Begin/End; the args object is the request's sink.
//!
//! Whether the user's Completed callback runs is decided by when the
//! operation finished: inside its `…Async` call (the call returns false,
//! results are readable at once, no callback) or later (the call returned
//! true; the callback runs exactly once on the loop thread). The phase
//! machine below makes that decision race-free: a completion that arrives
//! while the call is still running counts as synchronous.
//!
//! Accept with a buffer is AcceptEx: two stages, the accept and then a
//! receive of the first data on the accepted socket, raced against a timer.

use super::io::{socket_flags, Outcome, Sink, UserBuf};
use super::socket::{Dependent, Socket};
use crate::error::{Error, Result, ASOCK_CONNECTION_RESET, ASOCK_E_ARGUMENT, ASOCK_OK, ASOCK_OPERATION_ABORTED};
use crate::runtime::{Deliver, EventLoop, TimerId, TimerOutcome};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Bytes an accept with a buffer keeps at the end of it for the two
/// addresses: 2 × (sizeof(SOCKADDR_STORAGE) + 16), as AcceptEx.
pub(crate) const ACCEPT_ADDRESS_BYTES: usize = 288;
const ADDRESS_SLOT: usize = ACCEPT_ADDRESS_BYTES / 2;

/// Runs the user's Completed callback. `sender` and `args` are the ids the
/// embedding layer gave the socket and the args.
pub trait Completed: Clone + Default + Send + Sync + 'static {
    fn completed(&self, sender: u64, args: u64, user_token: usize);
    /// The args were freed while in use and are now done with: drop them.
    fn released(&self, args: u64);
}

/// .NET SocketAsyncOperation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum LastOperation {
    None = 0,
    Accept = 1,
    Connect = 2,
    Disconnect = 3,
    Receive = 4,
    ReceiveFrom = 5,
    Send = 7,
    SendTo = 9,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Free: setters and a new operation are allowed.
    Idle,
    /// Inside the `…Async` call that started the operation.
    InCall,
    /// The call returned true; the completion will run the callback.
    Pending,
    /// Finished before its call returned: the call reports false.
    CompletedInCall,
}

enum Stage {
    None,
    Accept {
        listener: Arc<Socket>,
        with_buffer: bool,
        timeout_ms: i32,
    },
    /// AcceptEx's second half: waiting for the first data. The endpoints
    /// are read when the accept completes: the receive's completion runs
    /// under the accepted socket's lock and must not call into it.
    AcceptReceive {
        listener: Arc<Socket>,
        accepted: Arc<Socket>,
        endpoints: Option<(SocketAddr, SocketAddr)>,
        timer: Option<(Arc<EventLoop>, TimerId)>,
        /// Why asock ended the wait itself, if it did.
        ended_by: Option<EndedBy>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EndedBy {
    /// No data within the listener's accept receive timeout.
    Timeout,
    /// The listener was closed.
    ListenerClosed,
}

/// The results an application reads back (SocketAsyncEventArgs'
/// properties); the AcceptSocket comes from `accept_socket_id`.
pub struct Info {
    pub last_operation: LastOperation,
    pub socket_error: i32,
    pub bytes_transferred: i32,
    pub remote_endpoint: Option<SocketAddr>,
    pub user_token: usize,
}

struct Inner<N> {
    /// Base pointer, offset and count (SetBuffer).
    buffer: Option<(UserBuf, usize, usize)>,
    buffer_list: Option<Box<[UserBuf]>>,
    completed: N,
    user_token: usize,
    /// The AcceptSocket and the id the embedding layer knows it by (0 until
    /// it asks for one).
    accept_socket: Option<(Arc<Socket>, u64)>,
    /// Whether `accept_socket` was set by the user (an input for the next
    /// accept) or is the result of the last one.
    accept_socket_is_input: bool,
    remote_endpoint: Option<SocketAddr>,
    msg_flags: i32,
    phase: Phase,
    stage: Stage,
    /// Counts operations, so a timer of an old accept cannot touch a new one.
    seq: u64,
    sender: u64,
    last_operation: LastOperation,
    socket_error: i32,
    bytes: usize,
    accept_endpoints: Option<(SocketAddr, SocketAddr)>,
    free_requested: bool,
    /// Callbacks queued and not yet returned: a free waits for them, so a
    /// callback can always read its args.
    deliveries: u32,
}

pub struct EventArgs<N: Completed> {
    id: AtomicU64,
    inner: Mutex<Inner<N>>,
}

impl<N: Completed> EventArgs<N> {
    pub fn new() -> Arc<Self> {
        Arc::new(EventArgs {
            id: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                buffer: None,
                buffer_list: None,
                completed: N::default(),
                user_token: 0,
                accept_socket: None,
                accept_socket_is_input: false,
                remote_endpoint: None,
                msg_flags: 0,
                phase: Phase::Idle,
                stage: Stage::None,
                seq: 0,
                sender: 0,
                last_operation: LastOperation::None,
                socket_error: ASOCK_OK,
                bytes: 0,
                accept_endpoints: None,
                free_requested: false,
                deliveries: 0,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner<N>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_id(&self, id: u64) {
        self.id.store(id, Ordering::Release);
    }

    /// The guard for a setter: the args must be free.
    fn idle(&self) -> Result<MutexGuard<'_, Inner<N>>> {
        let g = self.lock();
        if g.free_requested {
            return Err(Error::disposed("these event args have been freed"));
        }
        if g.phase != Phase::Idle {
            return Err(Error::invalid_operation("an operation is in progress using these event args"));
        }
        Ok(g)
    }

    pub fn set_buffer(&self, base: *mut u8, offset: i32, count: i32) -> Result<()> {
        if offset < 0 || count < 0 {
            return Err(Error::out_of_range(format!("offset {offset} and count {count} must not be negative")));
        }
        let mut g = self.idle()?;
        if base.is_null() {
            if count > 0 {
                return Err(Error::null("buf"));
            }
            g.buffer = None;
            return Ok(());
        }
        if g.buffer_list.is_some() {
            return Err(Error::argument("a buffer list is set: a buffer and a buffer list are mutually exclusive"));
        }
        g.buffer = Some((UserBuf { ptr: base, len: 0 }, offset as usize, count as usize));
        Ok(())
    }

    pub fn set_buffer_list(&self, list: Option<Vec<UserBuf>>) -> Result<()> {
        let mut g = self.idle()?;
        if list.is_some() && g.buffer.is_some() {
            return Err(Error::argument("a buffer is set: a buffer and a buffer list are mutually exclusive"));
        }
        g.buffer_list = list.map(Vec::into_boxed_slice);
        Ok(())
    }

    pub fn set_completed(&self, cb: N) -> Result<()> {
        self.idle()?.completed = cb;
        Ok(())
    }

    pub fn set_user_token(&self, token: usize) -> Result<()> {
        self.idle()?.user_token = token;
        Ok(())
    }

    /// `socket` with the id the embedding layer knows it by; None clears.
    pub fn set_accept_socket(&self, socket: Option<(Arc<Socket>, u64)>) -> Result<()> {
        let mut g = self.idle()?;
        g.accept_socket_is_input = socket.is_some();
        g.accept_socket = socket;
        Ok(())
    }

    /// The id of the AcceptSocket, giving one (through `register`) to a
    /// socket an accept made the first time it is asked for, under the
    /// args' lock so two readers cannot register it twice. 0: none.
    pub fn accept_socket_id(&self, register: impl FnOnce(Arc<Socket>) -> u64) -> u64 {
        let mut g = self.lock();
        match g.accept_socket.as_mut() {
            Some((_, id)) if *id != 0 => *id,
            Some((sock, id)) => {
                *id = register(sock.clone());
                *id
            }
            None => 0,
        }
    }

    pub fn set_remote_endpoint(&self, ep: Option<SocketAddr>) -> Result<()> {
        self.idle()?.remote_endpoint = ep;
        Ok(())
    }

    /// .NET SocketFlags.
    pub fn set_socket_flags(&self, flags: i32) -> Result<()> {
        let msg = socket_flags(flags)?;
        self.idle()?.msg_flags = msg;
        Ok(())
    }

    pub fn info(&self) -> Info {
        let g = self.lock();
        Info {
            last_operation: g.last_operation,
            socket_error: g.socket_error,
            bytes_transferred: g.bytes.min(i32::MAX as usize) as i32,
            remote_endpoint: g.remote_endpoint,
            user_token: g.user_token,
        }
    }

    /// The local and remote addresses of the last accept with a buffer.
    pub fn accept_endpoints(&self) -> Result<(SocketAddr, SocketAddr)> {
        self.lock().accept_endpoints.ok_or_else(|| {
            Error::invalid_operation("the last operation was not a completed accept with a receive buffer")
        })
    }

    /// Free: now (true) if idle, else when the operation completes. A
    /// second request is `ObjectDisposed`.
    pub fn request_free(&self) -> Result<bool> {
        let mut g = self.lock();
        if g.free_requested {
            return Err(Error::disposed("these event args have already been freed"));
        }
        g.free_requested = true;
        Ok(g.phase == Phase::Idle && g.deliveries == 0)
    }

    /// Whether a deferred free is due (the args went idle).
    pub fn free_due(&self) -> bool {
        let g = self.lock();
        g.free_requested && g.phase == Phase::Idle && g.deliveries == 0
    }

    pub fn is_in_use(&self) -> bool {
        self.lock().phase != Phase::Idle
    }

    // --- operations ---------------------------------------------------------

    /// Marks the args in use for `op`; the returned guard's data is reset.
    fn claim(&self, op: LastOperation, sender: u64, stage: Stage) -> Result<()> {
        let mut g = self.idle()?;
        g.phase = Phase::InCall;
        g.stage = stage;
        g.seq += 1;
        g.sender = sender;
        g.last_operation = op;
        g.socket_error = ASOCK_OK;
        g.bytes = 0;
        g.accept_endpoints = None;
        Ok(())
    }

    /// After the start call: false if it already completed, else true.
    fn settle(&self, started: Result<()>) -> Result<bool> {
        let mut g = self.lock();
        if let Err(e) = started {
            g.phase = Phase::Idle;
            g.stage = Stage::None;
            return Err(e);
        }
        Ok(match g.phase {
            Phase::CompletedInCall => {
                g.phase = Phase::Idle;
                false
            }
            _ => {
                g.phase = Phase::Pending;
                true
            }
        })
    }

    /// The single buffer region, or the list, for a send or receive.
    fn io_buffers(g: &Inner<N>) -> (UserBuf, Option<Box<[UserBuf]>>) {
        match (&g.buffer, &g.buffer_list) {
            (_, Some(list)) => (UserBuf::EMPTY, Some(list.clone())),
            // SAFETY: offset is within the caller's buffer (SetBuffer rule).
            (Some((base, offset, count)), None) => {
                (UserBuf { ptr: unsafe { base.ptr.add(*offset) }, len: *count }, None)
            }
            (None, None) => (UserBuf::EMPTY, None),
        }
    }

    pub fn accept_async(self: &Arc<Self>, listener: &Arc<Socket>, sender: u64) -> Result<bool> {
        // Read the inputs, then let go of the args before touching any
        // socket: completions take a socket's lock and then the args', so
        // the args' lock is never held while taking a socket's.
        let (has_list, buffer_count, into) = {
            let g = self.lock();
            let into = if g.accept_socket_is_input { g.accept_socket.as_ref().map(|(s, _)| s.clone()) } else { None };
            (g.buffer_list.is_some(), g.buffer.map(|(_, _, count)| count), into)
        };
        if listener.is_closed() {
            return Err(Error::disposed("the listening socket has been closed"));
        }
        if has_list {
            return Err(Error::argument("AcceptAsync does not take a buffer list"));
        }
        if let Some(count) = buffer_count {
            if count < ACCEPT_ADDRESS_BYTES {
                return Err(Error::argument(format!(
                    "the accept buffer's count {count} is below the {ACCEPT_ADDRESS_BYTES} bytes the addresses need"
                )));
            }
        }
        if !listener.is_listening()? {
            return Err(Error::invalid_operation("the socket is not listening: call bind and listen first"));
        }
        if let Some(target) = &into {
            if Arc::ptr_eq(target, listener) || target.is_bound_or_connected()? {
                return Err(Error::invalid_operation("the AcceptSocket is already bound or connected"));
            }
            if target.family() != listener.family() || target.socket_type() != listener.socket_type() {
                return Err(Error::new(
                    ASOCK_E_ARGUMENT,
                    "the AcceptSocket's family or type differs from the listener's",
                ));
            }
        }
        let timeout_ms = listener.get_option(super::SocketOption::AcceptReceiveTimeoutMs)?;
        let with_buffer = buffer_count.is_some();
        let stage = Stage::Accept { listener: listener.clone(), with_buffer, timeout_ms };
        self.claim(LastOperation::Accept, sender, stage)?;
        let started = listener.start_accept_into(into, self.clone());
        self.settle(started)
    }

    pub fn connect_async(self: &Arc<Self>, socket: &Arc<Socket>, sender: u64) -> Result<bool> {
        let ep = self.lock().remote_endpoint.ok_or_else(|| Error::null("the event args' remote endpoint"))?;
        self.claim(LastOperation::Connect, sender, Stage::None)?;
        let started = socket.start_connect(vec![ep], self.clone());
        self.settle(started)
    }

    pub fn send_async(self: &Arc<Self>, socket: &Arc<Socket>, sender: u64, to_remote: bool) -> Result<bool> {
        let (buf, list, flags, to) = {
            let g = self.lock();
            let (buf, list) = Self::io_buffers(&g);
            let to = if to_remote {
                Some(g.remote_endpoint.ok_or_else(|| Error::null("the event args' remote endpoint"))?)
            } else {
                None
            };
            (buf, list, g.msg_flags, to)
        };
        let op = if to_remote { LastOperation::SendTo } else { LastOperation::Send };
        self.claim(op, sender, Stage::None)?;
        let started = socket.start_send_list(buf, list, flags, to, self.clone());
        self.settle(started)
    }

    pub fn receive_async(self: &Arc<Self>, socket: &Arc<Socket>, sender: u64, with_sender: bool) -> Result<bool> {
        let (buf, list, flags) = {
            let g = self.lock();
            if with_sender {
                let ep = g.remote_endpoint.ok_or_else(|| {
                    Error::null("the event args' remote endpoint (ReceiveFromAsync needs one for its family)")
                })?;
                if super::AddressFamily::of(&ep) != socket.family() {
                    return Err(Error::argument(
                        "the event args' remote endpoint is not of the socket's address family",
                    ));
                }
            }
            let (buf, list) = Self::io_buffers(&g);
            (buf, list, g.msg_flags)
        };
        let op = if with_sender { LastOperation::ReceiveFrom } else { LastOperation::Receive };
        self.claim(op, sender, Stage::None)?;
        let started = socket.start_receive_list(buf, list, flags, with_sender, self.clone());
        self.settle(started)
    }

    /// Disconnect always finishes inside its call: false, with the result in
    /// `socket_error`.
    pub fn disconnect_async(self: &Arc<Self>, socket: &Arc<Socket>, sender: u64) -> Result<bool> {
        self.claim(LastOperation::Disconnect, sender, Stage::None)?;
        let outcome = match socket.disconnect() {
            Ok(()) => Outcome::ok(0),
            Err(e) if e.code() == crate::error::ASOCK_E_OBJECT_DISPOSED => {
                self.settle(Err(e.clone()))?;
                return Err(e);
            }
            Err(e) => Outcome::failed(e.code(), 0),
        };
        self.clone().complete(outcome, true, socket.event_loop());
        self.settle(Ok(()))
    }

    /// Records the end of the operation and, unless it finished inside its
    /// call, frees the args and queues the callback.
    fn finish(self: Arc<Self>, mut g: MutexGuard<'_, Inner<N>>, outcome: Outcome, event_loop: &EventLoop) {
        g.socket_error = outcome.error;
        g.bytes = outcome.bytes;
        g.stage = Stage::None;
        match g.last_operation {
            LastOperation::Accept => {
                g.accept_socket_is_input = g.accept_socket_is_input && outcome.accepted.is_some();
                if let Some(s) = outcome.accepted {
                    let same = g.accept_socket.as_ref().is_some_and(|(a, _)| Arc::ptr_eq(a, &s));
                    if !same {
                        g.accept_socket = Some((s, 0));
                    }
                    g.remote_endpoint = outcome.from;
                } else if !g.accept_socket_is_input {
                    g.accept_socket = None;
                }
            }
            LastOperation::ReceiveFrom if outcome.from.is_some() => g.remote_endpoint = outcome.from,
            _ => {}
        }
        if g.phase == Phase::InCall {
            g.phase = Phase::CompletedInCall;
            return;
        }
        g.phase = Phase::Idle;
        g.deliveries += 1;
        drop(g);
        // Cannot fail: a loop is sealed only after its sockets closed.
        let _ = event_loop.deliver(self);
    }

    /// AcceptEx's second stage: the accepted socket's first data. Runs
    /// under the listener's lock (inside the accept's completion).
    fn start_accept_receive(self: Arc<Self>, listener: Arc<Socket>, accepted: Arc<Socket>, timeout_ms: i32) {
        let endpoints = match (accepted.local_endpoint(), accepted.remote_endpoint()) {
            (Ok(l), Ok(r)) => Some((l, r)),
            _ => None,
        };
        let (region, seq) = {
            let mut g = self.lock();
            let Some((base, offset, count)) = g.buffer else {
                return;
            };
            g.stage = Stage::AcceptReceive {
                listener: listener.clone(),
                accepted: accepted.clone(),
                endpoints,
                timer: None,
                ended_by: None,
            };
            // SAFETY: within the caller's buffer (SetBuffer rule).
            (UserBuf { ptr: unsafe { base.ptr.add(offset) }, len: count - ACCEPT_ADDRESS_BYTES }, g.seq)
        };
        // Closing the listener must end this accept too (section 3).
        listener.add_dependent(Arc::downgrade(&self) as std::sync::Weak<dyn Dependent>);
        if let Err(e) = accepted.start_receive(region, 0, false, self.clone()) {
            accepted.reset_connection();
            let g = self.lock();
            let lp = listener.event_loop().clone();
            self.clone().finish(g, Outcome::failed(e.code(), 0), &lp);
            return;
        }
        if timeout_ms < 0 {
            return;
        }
        let lp = accepted.event_loop().clone();
        let me = self.clone();
        let timer = lp.add_timer(
            Duration::from_millis(timeout_ms as u64),
            Box::new(move |outcome| {
                if outcome == TimerOutcome::Fired {
                    me.end_accept_receive(seq, EndedBy::Timeout);
                }
            }),
        );
        let Ok(timer) = timer else {
            return;
        };
        let mut g = self.lock();
        let current = g.seq == seq;
        match &mut g.stage {
            Stage::AcceptReceive { timer: slot, .. } if current => *slot = Some((lp, timer)),
            // The data came first: the timer has nothing to do.
            _ => {
                drop(g);
                lp.cancel_timer(timer);
            }
        }
    }

    /// Ends the wait for first data from asock's side (timeout, listener
    /// closed): resets the connection, which aborts the receive, whose
    /// completion then reports why.
    fn end_accept_receive(&self, seq: u64, why: EndedBy) {
        let accepted = {
            let mut g = self.lock();
            if g.seq != seq {
                return;
            }
            match &mut g.stage {
                Stage::AcceptReceive { accepted, ended_by, timer, .. } if ended_by.is_none() => {
                    *ended_by = Some(why);
                    if why == EndedBy::Timeout {
                        *timer = None;
                    }
                    accepted.clone()
                }
                _ => return,
            }
        };
        accepted.reset_connection();
    }
}

impl<N: Completed> Dependent for EventArgs<N> {
    fn owner_closed(&self) {
        let seq = self.lock().seq;
        self.end_accept_receive(seq, EndedBy::ListenerClosed);
    }
}

/// Writes an address in the layout of a sockaddr (AcceptEx's reserved
/// tail holds two, local then remote).
fn write_address(slot: &mut [u8], addr: &SocketAddr) {
    let sa = socket2::SockAddr::from(*addr);
    let len = (sa.len() as usize).min(slot.len());
    // SAFETY: `sa.as_ptr()` points at `sa.len()` bytes of sockaddr.
    let bytes = unsafe { std::slice::from_raw_parts(sa.as_ptr() as *const u8, len) };
    slot[..len].copy_from_slice(bytes);
    slot[len..].fill(0);
}

/// Reads an address written by `write_address`.
pub fn read_address(slot: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([slot[0], slot[1]]) as i32;
    let len = match family {
        libc::AF_INET => std::mem::size_of::<libc::sockaddr_in>(),
        libc::AF_INET6 => std::mem::size_of::<libc::sockaddr_in6>(),
        _ => return None,
    };
    let mut storage = socket2::SockAddrStorage::zeroed();
    // SAFETY: copying at most `len` ≤ sizeof(storage) bytes into it.
    unsafe { std::ptr::copy_nonoverlapping(slot.as_ptr(), &mut storage as *mut _ as *mut u8, len) };
    // SAFETY: the storage holds a sockaddr of that family and length.
    unsafe { socket2::SockAddr::new(storage, len as libc::socklen_t) }.as_socket()
}

impl<N: Completed> Sink for EventArgs<N> {
    fn complete(self: Arc<Self>, mut outcome: Outcome, _synchronously: bool, event_loop: &EventLoop) {
        // An accept completes under the listener's lock only, so its new
        // socket may be asked for its peer — before the args' lock is taken.
        let mut accepted_local = None;
        if let Some(accepted) = &outcome.accepted {
            outcome.from = accepted.remote_endpoint().ok();
            accepted_local = accepted.local_endpoint().ok();
        }
        let mut g = self.lock();
        match std::mem::replace(&mut g.stage, Stage::None) {
            Stage::Accept { listener, with_buffer: true, timeout_ms } if outcome.error == ASOCK_OK => {
                let accepted = outcome.accepted.take().expect("an accept completes with a socket");
                let room = g.buffer.map_or(0, |(_, _, count)| count - ACCEPT_ADDRESS_BYTES);
                if room > 0 {
                    drop(g);
                    self.start_accept_receive(listener, accepted, timeout_ms);
                    return;
                }
                // Exactly the address bytes: no data is expected, so the
                // accept completes now (seed 001), addresses written.
                Self::write_tail(&mut g, accepted_local.zip(outcome.from));
                outcome.accepted = Some(accepted);
                self.clone().finish(g, outcome, event_loop);
            }
            Stage::AcceptReceive { listener, accepted, endpoints, timer, ended_by } => {
                listener.remove_dependent(Arc::as_ptr(&self) as *const ());
                if let Some((lp, t)) = timer {
                    lp.cancel_timer(t);
                }
                // The callback runs on the listener's loop: the accept was
                // started on the listener.
                let lp = listener.event_loop().clone();
                let failure = match (ended_by, outcome.error) {
                    (Some(EndedBy::Timeout), _) => Some(ASOCK_CONNECTION_RESET),
                    (Some(EndedBy::ListenerClosed), _) => Some(ASOCK_OPERATION_ABORTED),
                    (None, ASOCK_OK) => None,
                    // A local close (the AcceptSocket, the loop) aborts.
                    (None, ASOCK_OPERATION_ABORTED) => Some(ASOCK_OPERATION_ABORTED),
                    // The peer reset first (seed 001's half-open scans).
                    (None, _) => Some(ASOCK_CONNECTION_RESET),
                };
                if let Some(code) = failure {
                    if ended_by.is_none() {
                        // Reset from the loop: this runs under the accepted
                        // socket's lock.
                        let a = accepted.clone();
                        let _ = accepted.event_loop().post(Box::new(move || a.reset_connection()));
                    }
                    self.clone().finish(g, Outcome::failed(code, 0), &lp);
                    return;
                }
                Self::write_tail(&mut g, endpoints);
                let outcome =
                    Outcome { accepted: Some(accepted), from: endpoints.map(|e| e.1), ..Outcome::ok(outcome.bytes) };
                self.clone().finish(g, outcome, &lp);
            }
            Stage::Accept { .. } | Stage::None => {
                let outcome = if outcome.error == crate::error::ASOCK_E_OBJECT_DISPOSED {
                    Outcome::failed(ASOCK_OPERATION_ABORTED, outcome.bytes)
                } else {
                    outcome
                };
                self.clone().finish(g, outcome, event_loop);
            }
        }
    }
}

impl<N: Completed> EventArgs<N> {
    /// Writes the local and remote addresses into the buffer's reserved
    /// tail (GetAcceptExSockaddrs reads them there).
    fn write_tail(g: &mut Inner<N>, endpoints: Option<(SocketAddr, SocketAddr)>) {
        if let (Some((base, offset, count)), Some((local, remote))) = (g.buffer, endpoints) {
            // SAFETY: the reserved tail is inside the caller's buffer.
            let tail = unsafe {
                std::slice::from_raw_parts_mut(
                    base.ptr.add(offset + count - ACCEPT_ADDRESS_BYTES),
                    ACCEPT_ADDRESS_BYTES,
                )
            };
            let (l, r) = tail.split_at_mut(ADDRESS_SLOT);
            write_address(l, &local);
            write_address(r, &remote);
            g.accept_endpoints = Some((local, remote));
        }
    }
}

impl<N: Completed> Deliver for EventArgs<N> {
    fn deliver(self: Arc<Self>) {
        let (cb, sender, token) = {
            let g = self.lock();
            (g.completed.clone(), g.sender, g.user_token)
        };
        let id = self.id.load(Ordering::Acquire);
        cb.completed(sender, id, token);
        let due = {
            let mut g = self.lock();
            g.deliveries -= 1;
            g.free_requested && g.phase == Phase::Idle && g.deliveries == 0
        };
        if due {
            // A free asked for meanwhile takes effect now.
            cb.released(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_through_the_reserved_tail() {
        let mut tail = [0xAAu8; ACCEPT_ADDRESS_BYTES];
        let (l, r) = tail.split_at_mut(ADDRESS_SLOT);
        let a: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        let b: SocketAddr = "[::1]:80".parse().unwrap();
        write_address(l, &a);
        write_address(r, &b);
        assert_eq!(read_address(&tail[..ADDRESS_SLOT]), Some(a));
        assert_eq!(read_address(&tail[ADDRESS_SLOT..]), Some(b));
        assert_eq!(read_address(&[0u8; ADDRESS_SLOT]), None);
    }
}
