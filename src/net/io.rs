//! One asynchronous I/O request and the system calls that advance it.
//!
//! A request lives in its socket's inbound or outbound queue until it
//! completes. `attempt` is called under the socket's lock — first inside
//! Begin (when the queue is empty and the direction is not known to be
//! blocked), then each time readiness arrives — and says whether the request
//! finished, made partial progress, or would block.

use super::socket::Socket;
use crate::error::{from_errno, ASOCK_MESSAGE_SIZE, ASOCK_OK, ASOCK_OPERATION_ABORTED};
use crate::runtime::EventLoop;
use socket2::{SockAddr, Socket as Sock2};
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Connect,
    Accept,
    Send,
    Receive,
    SendTo,
    ReceiveFrom,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    In,
    Out,
}

impl OpKind {
    pub(crate) fn direction(self) -> Direction {
        match self {
            OpKind::Accept | OpKind::Receive | OpKind::ReceiveFrom => Direction::In,
            OpKind::Connect | OpKind::Send | OpKind::SendTo => Direction::Out,
        }
    }
}

/// Memory the caller lent to an operation. The caller keeps it valid and
/// unchanged until the operation completes (the overlapped I/O rule), which
/// is what lets asock read and write it in place.
#[derive(Clone, Copy, Debug)]
pub struct UserBuf {
    pub ptr: *mut u8,
    pub len: usize,
}

// SAFETY: the buffer is only touched under the owning socket's lock, by
// one thread at a time, while the caller has promised it stays valid.
unsafe impl Send for UserBuf {}
unsafe impl Sync for UserBuf {}

impl UserBuf {
    pub const EMPTY: UserBuf = UserBuf { ptr: std::ptr::null_mut(), len: 0 };
}

/// How an operation ended.
#[derive(Default)]
pub struct Outcome {
    /// `ASOCK_OK` or a SocketError value.
    pub error: i32,
    pub bytes: usize,
    pub accepted: Option<Arc<Socket>>,
    pub from: Option<SocketAddr>,
}

impl Outcome {
    pub fn ok(bytes: usize) -> Self {
        Outcome { error: ASOCK_OK, bytes, ..Default::default() }
    }
    pub fn failed(error: i32, bytes: usize) -> Self {
        Outcome { error, bytes, ..Default::default() }
    }
    pub fn aborted() -> Self {
        Outcome::failed(ASOCK_OPERATION_ABORTED, 0)
    }
}

/// Who learns of a completion (an async result, an event-args object).
pub trait Sink: Send + Sync {
    /// Stores the outcome and queues the user's callback on `event_loop`.
    /// Called under the socket's lock, so callbacks of one socket are queued
    /// in completion order; it must not call back into the socket.
    fn complete(self: Arc<Self>, outcome: Outcome, synchronously: bool, event_loop: &EventLoop);
}

pub(crate) struct Request {
    pub kind: OpKind,
    pub buf: UserBuf,
    /// `MSG_*` flags for the system call.
    pub flags: i32,
    /// A send-to destination.
    pub to: Option<SocketAddr>,
    /// A connect's targets. Boxed: connects are rare, and every queued
    /// request pays for the size of this struct.
    pub connect: Option<Box<ConnectPlan>>,
    /// Scatter/gather buffers (event args' BufferList), used instead of
    /// `buf` when present.
    pub bufs: Option<Box<[UserBuf]>>,
    /// An accept lands in this socket (event args' AcceptSocket) instead of
    /// a new one.
    pub accept_into: Option<Arc<Socket>>,
    /// Bytes moved so far (a stream send may take several calls).
    pub done: usize,
    pub sink: Arc<dyn Sink>,
}

/// Where a connect goes: targets tried in order until one connects.
#[derive(Default)]
pub struct ConnectPlan {
    pub targets: std::collections::VecDeque<SocketAddr>,
    /// `connect()` was issued for the front target and is in progress.
    pub started: bool,
    /// The host name is still being resolved: the request holds its place
    /// in the queue (so close aborts it) but cannot run yet.
    pub resolving: bool,
}

impl Request {
    pub(crate) fn new(kind: OpKind, buf: UserBuf, flags: i32, to: Option<SocketAddr>, sink: Arc<dyn Sink>) -> Self {
        Request { kind, buf, flags, to, connect: None, bufs: None, accept_into: None, done: 0, sink }
    }

    pub(crate) fn is_resolving(&self) -> bool {
        self.connect.as_ref().is_some_and(|c| c.resolving)
    }
}

/// .NET SocketFlags values asock accepts, as `MSG_*` flags.
const SOCKET_FLAG_OUT_OF_BAND: i32 = 0x1;
const SOCKET_FLAG_PEEK: i32 = 0x2;
const SOCKET_FLAG_DONT_ROUTE: i32 = 0x4;

/// Maps .NET SocketFlags to `MSG_*` flags; any other bit is refused.
pub fn socket_flags(flags: i32) -> crate::error::Result<i32> {
    let known = SOCKET_FLAG_OUT_OF_BAND | SOCKET_FLAG_PEEK | SOCKET_FLAG_DONT_ROUTE;
    if flags & !known != 0 {
        return Err(crate::error::Error::argument(format!(
            "socket flags {flags:#x} include bits other than OUT_OF_BAND (1), PEEK (2) and DONT_ROUTE (4)"
        )));
    }
    let mut msg = 0;
    if flags & SOCKET_FLAG_OUT_OF_BAND != 0 {
        msg |= libc::MSG_OOB;
    }
    if flags & SOCKET_FLAG_PEEK != 0 {
        msg |= libc::MSG_PEEK;
    }
    if flags & SOCKET_FLAG_DONT_ROUTE != 0 {
        msg |= libc::MSG_DONTROUTE;
    }
    Ok(msg)
}

pub(crate) enum Step {
    Done(Outcome),
    /// Done, and a stream receive took less than it asked for: the socket
    /// is very likely empty, so the next receive waits for an edge rather
    /// than making a system call that would fail. (On Linux every arrival
    /// raises a new edge, so nothing is missed; mio and libuv rely on the
    /// same rule.)
    Drained(Outcome),
    /// Some progress, then would-block: the direction is not ready.
    Partial,
    WouldBlock,
}

fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Advances `req` on `sock`. `owner` is the socket the request belongs to
/// (accepted connections inherit its loop, family, type and protocol).
pub(crate) fn attempt(sock: &Sock2, owner: &Socket, req: &mut Request) -> Step {
    match req.kind {
        OpKind::Send | OpKind::SendTo => send(sock, owner, req),
        OpKind::Receive | OpKind::ReceiveFrom => receive(sock, owner, req),
        OpKind::Accept => accept(sock, owner, req.accept_into.as_ref()),
        OpKind::Connect => connect(sock, req),
    }
}

fn send(sock: &Sock2, owner: &Socket, req: &mut Request) -> Step {
    let stream = owner.is_stream();
    if let Some(bufs) = &req.bufs {
        return send_list(sock, stream, req.flags, req.to, bufs, &mut req.done);
    }
    loop {
        let rest = req.buf.len - req.done;
        // SAFETY: `buf` is the caller's lent memory (see UserBuf); `done`
        // never exceeds `len`.
        let data = unsafe { std::slice::from_raw_parts(req.buf.ptr.add(req.done), rest) };
        let data = if req.buf.ptr.is_null() { &[][..] } else { data };
        let flags = req.flags | libc::MSG_NOSIGNAL;
        let sent = match (req.to, req.kind) {
            (Some(to), OpKind::SendTo) => sock.send_to_with_flags(data, &SockAddr::from(to), flags),
            _ => sock.send_with_flags(data, flags),
        };
        match sent {
            Ok(n) => {
                req.done += n;
                // A stream send completes when the whole buffer is gone; a
                // datagram is sent whole or not at all.
                if !stream || req.done == req.buf.len {
                    return Step::Done(Outcome::ok(req.done));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if would_block(&e) => return if req.done > 0 { Step::Partial } else { Step::WouldBlock },
            Err(e) => return Step::Done(Outcome::failed(from_errno(errno_of(&e)), req.done)),
        }
    }
}

fn receive(sock: &Sock2, owner: &Socket, req: &mut Request) -> Step {
    let want_from = req.kind == OpKind::ReceiveFrom;
    if let Some(bufs) = &req.bufs {
        return receive_list(sock, owner, req.flags, want_from, bufs);
    }
    if req.buf.len == 0 && owner.is_stream() {
        // A zero-byte receive waits until data is there and takes none
        // (the .NET readiness idiom), so peek one byte.
        let mut probe = [MaybeUninit::<u8>::uninit(); 1];
        return match sock.peek(&mut probe) {
            Ok(_) => Step::Done(Outcome::ok(0)),
            Err(e) if would_block(&e) => Step::WouldBlock,
            Err(e) => Step::Done(Outcome::failed(from_errno(errno_of(&e)), 0)),
        };
    }
    loop {
        match recvmsg(sock, req.buf, req.flags, want_from) {
            Ok((n, truncated, from)) => {
                let mut outcome = Outcome::ok(n);
                // A stream socket's recvmsg names no sender: it is the peer.
                outcome.from =
                    if want_from && from.is_none() { sock.peer_addr().ok().and_then(|a| a.as_socket()) } else { from };
                if truncated && !owner.is_stream() {
                    // .NET: the buffer holds the datagram's first bytes and
                    // the operation fails with MessageSize.
                    outcome.error = ASOCK_MESSAGE_SIZE;
                    outcome.bytes = req.buf.len;
                }
                let short = owner.is_stream() && n > 0 && n < req.buf.len && req.flags & libc::MSG_PEEK == 0;
                return if short { Step::Drained(outcome) } else { Step::Done(outcome) };
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if would_block(&e) => return Step::WouldBlock,
            Err(e) => return Step::Done(Outcome::failed(from_errno(errno_of(&e)), 0)),
        }
    }
}

/// recvmsg into the caller's buffer: the byte count, whether a datagram was
/// cut short, and (if asked) the sender.
fn recvmsg(sock: &Sock2, buf: UserBuf, flags: i32, want_from: bool) -> io::Result<(usize, bool, Option<SocketAddr>)> {
    let mut iov = [libc::iovec { iov_base: buf.ptr as *mut libc::c_void, iov_len: buf.len }];
    recvmsg_iov(sock, &mut iov, flags, want_from)
}

/// The kernel takes at most this many buffers per call.
const IOV_MAX: usize = 1024;

fn recvmsg_iov(
    sock: &Sock2,
    iov: &mut [libc::iovec],
    flags: i32,
    want_from: bool,
) -> io::Result<(usize, bool, Option<SocketAddr>)> {
    let mut storage = socket2::SockAddrStorage::zeroed();
    // SAFETY: a zeroed msghdr is a valid "no name, no control" header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    if want_from {
        msg.msg_name = &mut storage as *mut _ as *mut libc::c_void;
        msg.msg_namelen = storage.size_of();
    }
    // SAFETY: the iovecs point at the caller's lent buffers; the name
    // buffer is ours.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let truncated = msg.msg_flags & libc::MSG_TRUNC != 0;
    let from = if want_from && msg.msg_namelen > 0 {
        // SAFETY: the kernel filled `storage` with `msg_namelen` bytes.
        unsafe { SockAddr::new(storage, msg.msg_namelen) }.as_socket()
    } else {
        None
    };
    Ok((n as usize, truncated, from))
}

/// The iovecs for the part of `bufs` after the first `skip` bytes, at most
/// IOV_MAX of them.
fn iovecs_after(bufs: &[UserBuf], mut skip: usize) -> Vec<libc::iovec> {
    let mut iov = Vec::with_capacity(bufs.len().min(IOV_MAX));
    for b in bufs {
        if iov.len() == IOV_MAX {
            break;
        }
        if skip >= b.len {
            skip -= b.len;
            continue;
        }
        // SAFETY: within the caller's lent buffer.
        let base = unsafe { b.ptr.add(skip) };
        iov.push(libc::iovec { iov_base: base as *mut libc::c_void, iov_len: b.len - skip });
        skip = 0;
    }
    iov
}

fn send_list(
    sock: &Sock2,
    stream: bool,
    flags: i32,
    to: Option<SocketAddr>,
    bufs: &[UserBuf],
    done: &mut usize,
) -> Step {
    let total: usize = bufs.iter().map(|b| b.len).sum();
    let to = to.map(SockAddr::from);
    loop {
        let iov = iovecs_after(bufs, *done);
        // SAFETY: a zeroed msghdr is a valid "no name, no control" header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iov.len() as _;
        if let Some(to) = &to {
            msg.msg_name = to.as_ptr() as *mut libc::c_void;
            msg.msg_namelen = to.len();
        }
        // SAFETY: the iovecs point at the caller's lent buffers.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, flags | libc::MSG_NOSIGNAL) };
        if n >= 0 {
            *done += n as usize;
            if !stream || *done >= total {
                return Step::Done(Outcome::ok(*done));
            }
            continue;
        }
        let e = io::Error::last_os_error();
        match errno_of(&e) {
            libc::EINTR => continue,
            _ if would_block(&e) => return if *done > 0 { Step::Partial } else { Step::WouldBlock },
            errno => return Step::Done(Outcome::failed(from_errno(errno), *done)),
        }
    }
}

fn receive_list(sock: &Sock2, owner: &Socket, flags: i32, want_from: bool, bufs: &[UserBuf]) -> Step {
    let total: usize = bufs.iter().map(|b| b.len).sum();
    let stream = owner.is_stream();
    let mut done = 0;
    loop {
        // A call takes at most IOV_MAX buffers; a stream read that filled
        // them all goes on with the next ones while data is there.
        let mut iov = iovecs_after(bufs, done);
        let asked: usize = iov.iter().map(|v| v.iov_len).sum();
        match recvmsg_iov(sock, &mut iov, flags, want_from) {
            Ok((n, truncated, from)) => {
                done += n;
                if stream && n == asked && n > 0 && done < total {
                    continue;
                }
                let mut outcome = Outcome::ok(done);
                outcome.from = from;
                if truncated && !stream {
                    outcome.error = ASOCK_MESSAGE_SIZE;
                    outcome.bytes = asked;
                }
                return Step::Done(outcome);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if would_block(&e) => {
                return if done > 0 { Step::Done(Outcome::ok(done)) } else { Step::WouldBlock };
            }
            Err(e) if done > 0 => {
                // Report the data first; the error shows on the next call.
                let _ = e;
                return Step::Done(Outcome::ok(done));
            }
            Err(e) => return Step::Done(Outcome::failed(from_errno(errno_of(&e)), 0)),
        }
    }
}

fn accept(sock: &Sock2, owner: &Socket, into: Option<&Arc<Socket>>) -> Step {
    loop {
        // SAFETY: accept4 with no address out-parameters.
        let fd = unsafe {
            libc::accept4(
                sock.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: accept4 returned a fresh descriptor we now own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let landed = match into {
                Some(target) => target.install_accepted(Sock2::from(fd)).map(|()| target.clone()),
                None => owner.adopt_accepted(Sock2::from(fd)),
            };
            return Step::Done(match landed {
                Ok(s) => Outcome { accepted: Some(s), ..Outcome::ok(0) },
                Err(e) => Outcome::failed(e.code(), 0),
            });
        }
        let e = io::Error::last_os_error();
        match errno_of(&e) {
            // A connection that died in the backlog is not this accept's
            // failure: take the next one (as libuv does).
            libc::EINTR | libc::ECONNABORTED => continue,
            _ if would_block(&e) => return Step::WouldBlock,
            errno => return Step::Done(Outcome::failed(from_errno(errno), 0)),
        }
    }
}

fn connect(sock: &Sock2, req: &mut Request) -> Step {
    let Some(plan) = req.connect.as_mut() else {
        return Step::Done(Outcome::failed(crate::error::ASOCK_DESTINATION_ADDRESS_REQUIRED, 0));
    };
    if plan.resolving {
        return Step::WouldBlock;
    }
    loop {
        let Some(target) = plan.targets.front().copied() else {
            return Step::Done(Outcome::failed(crate::error::ASOCK_DESTINATION_ADDRESS_REQUIRED, 0));
        };
        // Linux lets a socket whose connect failed connect again, so a
        // failed target moves on to the next one on the same socket.
        let failed = |plan: &mut ConnectPlan, errno: i32| {
            plan.targets.pop_front();
            plan.started = false;
            if plan.targets.is_empty() {
                Some(Step::Done(Outcome::failed(from_errno(errno), 0)))
            } else {
                None
            }
        };
        if !plan.started {
            plan.started = true;
            match sock.connect(&SockAddr::from(target)) {
                Ok(()) => return Step::Done(Outcome::ok(0)),
                Err(e) if errno_of(&e) == libc::EINPROGRESS || would_block(&e) => return Step::WouldBlock,
                Err(e) => match failed(plan, errno_of(&e)) {
                    Some(done) => return done,
                    None => continue,
                },
            }
        }
        // In progress: writable (or an error) means it finished.
        match sock.take_error() {
            Ok(None) => {}
            Ok(Some(e)) => match failed(plan, errno_of(&e)) {
                Some(done) => return done,
                None => continue,
            },
            Err(e) => return Step::Done(Outcome::failed(from_errno(errno_of(&e)), 0)),
        }
        return match sock.peer_addr() {
            Ok(_) => Step::Done(Outcome::ok(0)),
            Err(e) if errno_of(&e) == libc::ENOTCONN => Step::WouldBlock,
            Err(e) => Step::Done(Outcome::failed(from_errno(errno_of(&e)), 0)),
        };
    }
}
