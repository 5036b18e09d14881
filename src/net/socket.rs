//! A socket: a non-blocking descriptor that belongs to one event loop.
//!
//! Every call takes the socket's lock while it touches the descriptor, and
//! `close` takes it to drop the descriptor, so no call can ever act on a
//! number the kernel has already handed to someone else.

use super::io::{self, ConnectPlan, Direction, OpKind, Outcome, Request, Sink, Step, UserBuf};
use crate::error::{Error, Result, ASOCK_PROTOCOL_OPTION};
use crate::runtime::{EventLoop, Source, SourceKey};
use crate::trace;
use crate::trace::{LEVEL_ERROR, LEVEL_INFO, LEVEL_VERBOSE};
use socket2::{Domain, Protocol as Proto2, SockAddr, Socket as Sock2, Type};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressFamily {
    Inet,
    Inet6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketType {
    Stream,
    Dgram,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// The type's usual protocol.
    Unspecified,
    Tcp,
    Udp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownHow {
    Receive,
    Send,
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketOption {
    NoDelay,
    ReuseAddress,
    ReusePort,
    KeepAlive,
    /// -1 off, 0 reset on close, n > 0 linger n seconds.
    LingerSeconds,
    SendBufferSize,
    ReceiveBufferSize,
    Broadcast,
    Ipv6Only,
    Ttl,
    /// How long an accept with a receive buffer waits for the first data.
    AcceptReceiveTimeoutMs,
}

/// Default for `AcceptReceiveTimeoutMs`: long enough for a slow client's
/// first bytes, short enough that half-open scans do not pin sockets.
pub(crate) const DEFAULT_ACCEPT_RECEIVE_TIMEOUT_MS: i32 = 30_000;

static NEXT_SOCKET_NUMBER: AtomicU64 = AtomicU64::new(1);

struct State {
    /// None once closed.
    sock: Option<Sock2>,
    accept_receive_timeout_ms: i32,
    /// `listen` succeeded (kept here so Begin accept needs no getsockopt).
    listening: bool,
    io: Io,
}

/// The operation queues and what is known of readiness. Each direction's
/// queue completes in the order operations were started.
struct Io {
    inbound: std::collections::VecDeque<Request>,
    outbound: std::collections::VecDeque<Request>,
    /// False once a call in that direction saw would-block (or a short
    /// read/write); set again by the next edge. While false, a new operation
    /// joins the queue without a doomed system call.
    read_ready: bool,
    write_ready: bool,
    /// Registered with the poller (done once, at the first would-block).
    registered: bool,
    /// An edge reported the peer's end (or an error): a short read no
    /// longer means "empty", since the end itself is still to be read and
    /// no further edge will announce it.
    read_closed: bool,
}

impl Io {
    fn new() -> Self {
        Io {
            inbound: Default::default(),
            outbound: Default::default(),
            read_ready: true,
            write_ready: true,
            registered: false,
            read_closed: false,
        }
    }
}

/// Something that must hear when a socket closes although it has nothing
/// queued on it: an accept in its second stage (AcceptEx's first-data wait)
/// belongs to the listener but waits on the accepted socket.
pub trait Dependent: Send + Sync {
    fn owner_closed(&self);
}

pub struct Socket {
    number: u64,
    /// Kept apart from `state`: registered under the listener's state lock,
    /// notified after `close` has released it.
    dependents: Mutex<Vec<std::sync::Weak<dyn Dependent>>>,
    event_loop: Arc<EventLoop>,
    family: AddressFamily,
    kind: SocketType,
    protocol: Protocol,
    key: OnceLock<SourceKey>,
    state: Mutex<State>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AddressFamily {
    pub fn of(addr: &SocketAddr) -> Self {
        if addr.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        }
    }
}

impl Socket {
    /// Creates a non-blocking, close-on-exec socket on `event_loop`.
    pub fn new(
        event_loop: &Arc<EventLoop>,
        family: AddressFamily,
        kind: SocketType,
        protocol: Protocol,
    ) -> Result<Arc<Socket>> {
        let socket = Socket::adopt(event_loop, Socket::raw(family, kind, protocol)?, family, kind, protocol)?;
        trace!(
            LEVEL_INFO,
            "socket",
            "socket {} created ({family:?} {kind:?} {protocol:?}) on loop {}",
            socket.number,
            event_loop.number()
        );
        Ok(socket)
    }

    /// A bare non-blocking, close-on-exec descriptor.
    fn raw(family: AddressFamily, kind: SocketType, protocol: Protocol) -> Result<Sock2> {
        let domain = match family {
            AddressFamily::Inet => Domain::IPV4,
            AddressFamily::Inet6 => Domain::IPV6,
        };
        let ty = match kind {
            SocketType::Stream => Type::STREAM,
            SocketType::Dgram => Type::DGRAM,
        };
        let proto = match protocol {
            Protocol::Unspecified => None,
            Protocol::Tcp => Some(Proto2::TCP),
            Protocol::Udp => Some(Proto2::UDP),
        };
        let sock = Sock2::new(domain, ty, proto)
            .map_err(|e| Error::os(&e, &format!("create {family:?} {kind:?} {protocol:?} socket")))?;
        sock.set_nonblocking(true).map_err(|e| Error::os(&e, "set non-blocking"))?;
        Ok(sock)
    }

    pub fn number(&self) -> u64 {
        self.number
    }
    pub fn event_loop(&self) -> &Arc<EventLoop> {
        &self.event_loop
    }
    pub fn family(&self) -> AddressFamily {
        self.family
    }
    pub fn socket_type(&self) -> SocketType {
        self.kind
    }
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    pub fn is_closed(&self) -> bool {
        lock(&self.state).sock.is_none()
    }

    fn disposed(&self) -> Error {
        Error::disposed(format!("socket {} has been closed", self.number))
    }

    /// Runs `f` on the open descriptor and traces its outcome: success at
    /// `level` (INFO for changes, VERBOSE for queries), failure at ERROR.
    /// `what` is only called when a record is made, so tracing off costs no
    /// formatting.
    fn with_sock<T>(
        &self,
        level: i32,
        what: impl FnOnce() -> String,
        f: impl FnOnce(&Sock2, &mut i32) -> Result<T>,
    ) -> Result<T> {
        let mut st = lock(&self.state);
        let State { sock, accept_receive_timeout_ms, .. } = &mut *st;
        let Some(sock) = sock.as_ref() else {
            return Err(self.disposed());
        };
        let result = f(sock, accept_receive_timeout_ms);
        match &result {
            Ok(_) => trace!(level, "socket", "socket {}: {}", self.number, what()),
            Err(e) => trace!(LEVEL_ERROR, "socket", "socket {}: {} failed: {e}", self.number, what()),
        }
        result
    }

    fn check_family(&self, addr: &SocketAddr) -> Result<()> {
        if AddressFamily::of(addr) != self.family {
            return Err(Error::new(
                crate::error::ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED,
                format!("endpoint {addr} does not match the socket's address family ({:?})", self.family),
            ));
        }
        Ok(())
    }

    pub fn bind(&self, addr: SocketAddr) -> Result<()> {
        self.with_sock(
            LEVEL_INFO,
            || format!("bind {addr}"),
            |s, _| {
                self.check_family(&addr)?;
                s.bind(&SockAddr::from(addr)).map_err(|e| Error::os(&e, &format!("bind {addr}")))
            },
        )
    }

    pub fn listen(&self, backlog: i32) -> Result<()> {
        if backlog < 0 {
            return Err(Error::out_of_range(format!("backlog {backlog} is negative")));
        }
        self.with_sock(
            LEVEL_INFO,
            || format!("listen (backlog {backlog})"),
            |s, _| s.listen(backlog).map_err(|e| Error::os(&e, "listen")),
        )?;
        lock(&self.state).listening = true;
        Ok(())
    }

    /// Whether `listen` has succeeded on this socket.
    pub fn is_listening(&self) -> Result<bool> {
        let st = lock(&self.state);
        if st.sock.is_none() {
            return Err(self.disposed());
        }
        Ok(st.listening)
    }

    /// The bound address. An unbound socket has none (as .NET's null).
    pub fn local_endpoint(&self) -> Result<SocketAddr> {
        self.with_sock(
            LEVEL_VERBOSE,
            || "local endpoint".into(),
            |s, _| {
                let addr = s.local_addr().map_err(|e| Error::os(&e, "getsockname"))?;
                match addr.as_socket() {
                    Some(a) if a.port() != 0 => Ok(a),
                    _ => Err(Error::invalid_operation("the socket is not bound")),
                }
            },
        )
    }

    pub fn remote_endpoint(&self) -> Result<SocketAddr> {
        self.with_sock(
            LEVEL_VERBOSE,
            || "remote endpoint".into(),
            |s, _| {
                let addr = s.peer_addr().map_err(|e| Error::os(&e, "getpeername"))?;
                addr.as_socket().ok_or_else(|| Error::invalid_operation("the peer address is not an IP endpoint"))
            },
        )
    }

    fn tcp_only(&self, option: SocketOption) -> Result<()> {
        if self.kind != SocketType::Stream {
            return Err(Error::new(ASOCK_PROTOCOL_OPTION, format!("{option:?} applies to stream sockets only")));
        }
        Ok(())
    }

    pub fn set_option(&self, option: SocketOption, value: i32) -> Result<()> {
        use SocketOption::*;
        let on = value == 1;
        let boolean = matches!(option, NoDelay | ReuseAddress | ReusePort | KeepAlive | Broadcast | Ipv6Only);
        if boolean && value != 0 && value != 1 {
            return Err(Error::out_of_range(format!("{option:?} takes 0 or 1, not {value}")));
        }
        let os = |e: std::io::Error| Error::os(&e, &format!("set {option:?}"));
        self.with_sock(
            LEVEL_INFO,
            || format!("set {option:?} = {value}"),
            |s, accept_timeout| match option {
                NoDelay => {
                    self.tcp_only(option)?;
                    s.set_tcp_nodelay(on).map_err(os)
                }
                ReuseAddress => s.set_reuse_address(on).map_err(os),
                ReusePort => s.set_reuse_port(on).map_err(os),
                KeepAlive => s.set_keepalive(on).map_err(os),
                LingerSeconds => {
                    let linger = match value {
                        -1 => None,
                        0..=65535 => Some(Duration::from_secs(value as u64)),
                        _ => {
                            return Err(Error::out_of_range(format!(
                                "linger {value} is not -1 (off) or 0..65535 seconds"
                            )))
                        }
                    };
                    s.set_linger(linger).map_err(os)
                }
                SendBufferSize | ReceiveBufferSize => {
                    if value < 0 {
                        return Err(Error::out_of_range(format!("buffer size {value} is negative")));
                    }
                    if option == SendBufferSize {
                        s.set_send_buffer_size(value as usize).map_err(os)
                    } else {
                        s.set_recv_buffer_size(value as usize).map_err(os)
                    }
                }
                Broadcast => s.set_broadcast(on).map_err(os),
                Ipv6Only => {
                    if self.family != AddressFamily::Inet6 {
                        return Err(Error::new(ASOCK_PROTOCOL_OPTION, "Ipv6Only applies to IPv6 sockets only"));
                    }
                    s.set_only_v6(on).map_err(os)
                }
                Ttl => {
                    if !(1..=255).contains(&value) {
                        return Err(Error::out_of_range(format!("TTL {value} is not in 1..255")));
                    }
                    match self.family {
                        AddressFamily::Inet => s.set_ttl_v4(value as u32).map_err(os),
                        AddressFamily::Inet6 => s.set_unicast_hops_v6(value as u32).map_err(os),
                    }
                }
                AcceptReceiveTimeoutMs => {
                    if value == 0 || value < -1 {
                        return Err(Error::out_of_range(format!(
                            "accept receive timeout {value} is not -1 (none) or a positive number of ms"
                        )));
                    }
                    *accept_timeout = value;
                    Ok(())
                }
            },
        )
    }

    pub fn get_option(&self, option: SocketOption) -> Result<i32> {
        use SocketOption::*;
        let os = |e: std::io::Error| Error::os(&e, &format!("get {option:?}"));
        let clamp = |n: usize| n.min(i32::MAX as usize) as i32;
        self.with_sock(
            LEVEL_VERBOSE,
            || format!("get {option:?}"),
            |s, accept_timeout| match option {
                NoDelay => {
                    self.tcp_only(option)?;
                    s.tcp_nodelay().map(i32::from).map_err(os)
                }
                ReuseAddress => s.reuse_address().map(i32::from).map_err(os),
                ReusePort => s.reuse_port().map(i32::from).map_err(os),
                KeepAlive => s.keepalive().map(i32::from).map_err(os),
                LingerSeconds => s.linger().map(|l| l.map_or(-1, |d| d.as_secs() as i32)).map_err(os),
                SendBufferSize => s.send_buffer_size().map(clamp).map_err(os),
                ReceiveBufferSize => s.recv_buffer_size().map(clamp).map_err(os),
                Broadcast => s.broadcast().map(i32::from).map_err(os),
                Ipv6Only => {
                    if self.family != AddressFamily::Inet6 {
                        return Err(Error::new(ASOCK_PROTOCOL_OPTION, "Ipv6Only applies to IPv6 sockets only"));
                    }
                    s.only_v6().map(i32::from).map_err(os)
                }
                Ttl => match self.family {
                    AddressFamily::Inet => s.ttl_v4().map(|v| v as i32).map_err(os),
                    AddressFamily::Inet6 => s.unicast_hops_v6().map(|v| v as i32).map_err(os),
                },
                AcceptReceiveTimeoutMs => Ok(*accept_timeout),
            },
        )
    }

    pub fn shutdown(&self, how: ShutdownHow) -> Result<()> {
        // Linux lets shutdown(SHUT_RD) quietly end a listener; .NET (and
        // Winsock) say a listener is not connected.
        if self.is_listening()? {
            return Err(Error::new(crate::error::ASOCK_NOT_CONNECTED, "a listening socket is not connected"));
        }
        let sh = match how {
            ShutdownHow::Receive => Shutdown::Read,
            ShutdownHow::Send => Shutdown::Write,
            ShutdownHow::Both => Shutdown::Both,
        };
        self.with_sock(
            LEVEL_INFO,
            || format!("shutdown {how:?}"),
            |s, _| s.shutdown(sh).map_err(|e| Error::os(&e, "shutdown")),
        )
    }

    /// Dispose: closes the descriptor and completes every queued operation
    /// with `OperationAborted`. A second close is `ObjectDisposed`.
    pub fn close(&self) -> Result<()> {
        if self.close_quietly() {
            Ok(())
        } else {
            Err(self.disposed())
        }
    }

    /// Closes if open; false if it already was (no error is built, so
    /// dropping a closed socket costs nothing).
    fn close_quietly(&self) -> bool {
        let mut st = lock(&self.state);
        let Some(sock) = st.sock.take() else {
            return false;
        };
        if let Some(key) = self.key.get() {
            // Closing the descriptor removes it from epoll; the slot's
            // generation bump is what keeps stale events away.
            self.event_loop.detach_closing(*key);
        }
        drop(sock);
        // Completed under the lock, like every other completion, so the
        // callbacks of this socket stay in order.
        let aborted = self.abort_queued(&mut st);
        drop(st);
        let dependents = std::mem::take(&mut *self.dependents.lock().unwrap_or_else(|p| p.into_inner()));
        for d in dependents.iter().filter_map(std::sync::Weak::upgrade) {
            d.owner_closed();
        }
        trace!(LEVEL_INFO, "socket", "socket {} closed ({aborted} pending operations aborted)", self.number);
        true
    }

    pub(crate) fn is_stream(&self) -> bool {
        self.kind == SocketType::Stream
    }

    /// Wraps a connection accepted on this listener: same loop, family,
    /// type and protocol. The descriptor is already non-blocking.
    pub(crate) fn adopt_accepted(&self, sock: Sock2) -> Result<Arc<Socket>> {
        Socket::adopt(&self.event_loop, sock, self.family, self.kind, self.protocol)
    }

    fn adopt(
        event_loop: &Arc<EventLoop>,
        sock: Sock2,
        family: AddressFamily,
        kind: SocketType,
        protocol: Protocol,
    ) -> Result<Arc<Socket>> {
        let socket = Arc::new(Socket {
            number: NEXT_SOCKET_NUMBER.fetch_add(1, Ordering::Relaxed),
            dependents: Mutex::new(Vec::new()),
            event_loop: event_loop.clone(),
            family,
            kind,
            protocol,
            key: OnceLock::new(),
            state: Mutex::new(State {
                sock: Some(sock),
                accept_receive_timeout_ms: DEFAULT_ACCEPT_RECEIVE_TIMEOUT_MS,
                listening: false,
                io: Io::new(),
            }),
        });
        let weak: std::sync::Weak<dyn Source> = Arc::downgrade(&socket) as _;
        let key = event_loop.attach(weak)?;
        let _ = socket.key.set(key);
        Ok(socket)
    }

    /// Starts an operation: tries it at once when nothing is queued ahead of
    /// it in its direction and that direction is not known to be blocked,
    /// else (or on would-block) queues it for readiness. The completion goes
    /// to the request's sink, never to the caller of `submit`.
    pub(crate) fn submit(&self, mut req: Request) -> Result<()> {
        let mut st = lock(&self.state);
        let State { sock, io, .. } = &mut *st;
        let Some(sock) = sock.as_ref() else {
            return Err(self.disposed());
        };
        trace!(LEVEL_VERBOSE, "socket", "socket {}: begin {:?} ({} bytes)", self.number, req.kind, req.buf.len);
        let direction = req.kind.direction();
        let (queue, ready) = match direction {
            Direction::In => (&mut io.inbound, &mut io.read_ready),
            Direction::Out => (&mut io.outbound, &mut io.write_ready),
        };
        // A connect that has not started needs no readiness: connect() is
        // what will produce the next edge.
        let may_try = *ready || (req.kind == OpKind::Connect && !req.is_resolving());
        if queue.is_empty() && may_try && !req.is_resolving() {
            match io::attempt(sock, self, &mut req) {
                Step::Done(outcome) => {
                    self.finish_request(req, outcome, true);
                    return Ok(());
                }
                Step::Drained(outcome) => {
                    *ready = io.read_closed;
                    self.finish_request(req, outcome, true);
                    return Ok(());
                }
                Step::Partial | Step::WouldBlock => *ready = false,
            }
        }
        if queue.capacity() == 0 {
            // Most sockets never have more than one operation queued per
            // direction: start with room for exactly one.
            queue.reserve_exact(1);
        }
        queue.push_back(req);
        if !io.registered {
            io.registered = true;
            let key = *self.key.get().expect("a socket is attached when created");
            if let Err(e) = self.event_loop.watch(key, sock.as_raw_fd()) {
                // Without readiness the operation could never finish: fail
                // it now, through its sink, rather than strand it.
                io.registered = false;
                let queue = match direction {
                    Direction::In => &mut io.inbound,
                    Direction::Out => &mut io.outbound,
                };
                if let Some(req) = queue.pop_back() {
                    req.sink.complete(Outcome::failed(e.code(), 0), true, &self.event_loop);
                }
            }
        }
        Ok(())
    }

    /// Whether the socket is bound to a local port or connected — an
    /// AcceptSocket must be neither (seed 001).
    pub fn is_bound_or_connected(&self) -> Result<bool> {
        let st = lock(&self.state);
        let sock = st.sock.as_ref().ok_or_else(|| self.disposed())?;
        if st.listening || sock.peer_addr().is_ok() {
            return Ok(true);
        }
        Ok(sock.local_addr().ok().and_then(|a| a.as_socket()).is_some_and(|a| a.port() != 0))
    }

    /// Replaces this socket's descriptor with a connection accepted on a
    /// listener (event args' AcceptSocket). The socket keeps its loop, so
    /// its later operations complete there.
    pub(crate) fn install_accepted(&self, new: Sock2) -> Result<()> {
        let mut st = lock(&self.state);
        if st.sock.is_none() {
            return Err(self.disposed());
        }
        self.replace_descriptor(&mut st, new);
        trace!(LEVEL_INFO, "socket", "socket {}: took an accepted connection", self.number);
        Ok(())
    }

    /// Swaps the descriptor under the lock: the old one is deregistered
    /// before it is closed, and what was known of readiness starts over.
    fn replace_descriptor(&self, st: &mut State, new: Sock2) {
        if st.io.registered {
            if let Some(key) = self.key.get() {
                self.event_loop.unwatch(*key);
            }
        }
        st.io.registered = false;
        st.io.read_ready = true;
        st.io.write_ready = true;
        st.io.read_closed = false;
        st.listening = false;
        st.sock = Some(new);
    }

    /// Completes every queued operation with `OperationAborted`.
    fn abort_queued(&self, st: &mut State) -> usize {
        let io = &mut st.io;
        let aborted = io.inbound.len() + io.outbound.len();
        for req in io.inbound.drain(..).chain(io.outbound.drain(..)) {
            req.sink.complete(Outcome::aborted(), false, &self.event_loop);
        }
        aborted
    }

    /// Disconnect with reuse (.NET DisconnectAsync): shuts the connection
    /// down, aborts what is queued, and gives the socket a fresh descriptor
    /// of the same family, type and protocol, so it can connect again.
    pub fn disconnect(&self) -> Result<()> {
        let fresh = Socket::raw(self.family, self.kind, self.protocol)?;
        let mut st = lock(&self.state);
        let sock = st.sock.as_ref().ok_or_else(|| self.disposed())?;
        if sock.peer_addr().is_err() {
            return Err(Error::new(crate::error::ASOCK_NOT_CONNECTED, "the socket is not connected"));
        }
        let _ = sock.shutdown(Shutdown::Both);
        self.abort_queued(&mut st);
        self.replace_descriptor(&mut st, fresh);
        trace!(LEVEL_INFO, "socket", "socket {}: disconnected, ready for reuse", self.number);
        Ok(())
    }

    pub(crate) fn add_dependent(&self, d: std::sync::Weak<dyn Dependent>) {
        let mut list = self.dependents.lock().unwrap_or_else(|p| p.into_inner());
        list.retain(|w| w.strong_count() > 0);
        list.push(d);
    }

    /// Forgets the dependent whose data pointer is `ptr`.
    pub(crate) fn remove_dependent(&self, ptr: *const ()) {
        let mut list = self.dependents.lock().unwrap_or_else(|p| p.into_inner());
        list.retain(|w| w.strong_count() > 0 && !std::ptr::addr_eq(w.as_ptr(), ptr));
    }

    /// Resets the connection (SO_LINGER 0: the peer sees a reset) and gives
    /// the socket a fresh, unbound descriptor, so an AcceptSocket stays
    /// usable for the next accept. Queued operations are aborted.
    pub fn reset_connection(&self) {
        let fresh = Socket::raw(self.family, self.kind, self.protocol);
        let mut st = lock(&self.state);
        let Some(sock) = st.sock.as_ref() else {
            return;
        };
        let _ = sock.set_linger(Some(Duration::ZERO));
        self.abort_queued(&mut st);
        match fresh {
            Ok(fresh) => self.replace_descriptor(&mut st, fresh),
            Err(_) => {
                // No descriptor to be had: close instead (still a reset).
                if let Some(key) = self.key.get() {
                    self.event_loop.detach(*key);
                }
                st.sock = None;
            }
        }
        trace!(LEVEL_INFO, "socket", "socket {}: connection reset", self.number);
    }

    /// Refuses to connect a connected socket (.NET: IsConnected). Linux
    /// would let a second connect after a completed one return 0.
    fn check_not_connected(&self) -> Result<()> {
        let st = lock(&self.state);
        let sock = st.sock.as_ref().ok_or_else(|| self.disposed())?;
        if sock.peer_addr().is_ok() {
            return Err(Error::new(crate::error::ASOCK_IS_CONNECTED, "the socket is already connected"));
        }
        Ok(())
    }

    /// Begins a send (`to`: a send-to destination).
    pub fn start_send(&self, buf: UserBuf, flags: i32, to: Option<SocketAddr>, sink: Arc<dyn Sink>) -> Result<()> {
        self.start_send_list(buf, None, flags, to, sink)
    }

    /// Begins a send from `buf`, or from `list` (scatter/gather) when given.
    pub fn start_send_list(
        &self,
        buf: UserBuf,
        list: Option<Box<[UserBuf]>>,
        flags: i32,
        to: Option<SocketAddr>,
        sink: Arc<dyn Sink>,
    ) -> Result<()> {
        if let Some(to) = &to {
            self.check_family(to)?;
        }
        let kind = if to.is_some() { OpKind::SendTo } else { OpKind::Send };
        let mut req = Request::new(kind, buf, flags, to, sink);
        req.bufs = list;
        self.submit(req)
    }

    /// Begins a receive (`with_sender`: a receive-from).
    pub fn start_receive(&self, buf: UserBuf, flags: i32, with_sender: bool, sink: Arc<dyn Sink>) -> Result<()> {
        self.start_receive_list(buf, None, flags, with_sender, sink)
    }

    /// Begins a receive into `buf`, or into `list` when given.
    pub fn start_receive_list(
        &self,
        buf: UserBuf,
        list: Option<Box<[UserBuf]>>,
        flags: i32,
        with_sender: bool,
        sink: Arc<dyn Sink>,
    ) -> Result<()> {
        let kind = if with_sender { OpKind::ReceiveFrom } else { OpKind::Receive };
        let mut req = Request::new(kind, buf, flags, None, sink);
        req.bufs = list;
        self.submit(req)
    }

    /// Begins an accept. The socket must be a listening stream socket
    /// (.NET: "You must call Bind and Listen first").
    pub fn start_accept(&self, sink: Arc<dyn Sink>) -> Result<()> {
        self.start_accept_into(None, sink)
    }

    /// Begins an accept whose connection lands in `into` when given (event
    /// args' AcceptSocket), else in a new socket on this listener's loop.
    pub fn start_accept_into(&self, into: Option<Arc<Socket>>, sink: Arc<dyn Sink>) -> Result<()> {
        if !self.is_listening()? {
            return Err(Error::invalid_operation(format!(
                "socket {} is not listening: call bind and listen first",
                self.number
            )));
        }
        let mut req = Request::new(OpKind::Accept, UserBuf::EMPTY, 0, None, sink);
        req.accept_into = into;
        self.submit(req)
    }

    /// Begins a connect to the first of `targets`, falling back to the
    /// others in order. Every target must be of the socket's family.
    pub fn start_connect(&self, targets: Vec<SocketAddr>, sink: Arc<dyn Sink>) -> Result<()> {
        for t in &targets {
            self.check_family(t)?;
        }
        if self.is_listening()? {
            return Err(Error::invalid_operation(format!("socket {} is listening and cannot connect", self.number)));
        }
        self.check_not_connected()?;
        if targets.is_empty() {
            return Err(Error::argument("no endpoint to connect to"));
        }
        let mut req = Request::new(OpKind::Connect, UserBuf::EMPTY, 0, None, sink);
        req.connect = Some(Box::new(ConnectPlan { targets: targets.into(), ..Default::default() }));
        self.submit(req)
    }

    /// Begins a connect to a host name: the request takes its place in the
    /// queue now and runs once the resolver answers (`resolved`).
    pub fn start_connect_host(self: &Arc<Self>, host: &str, port: u16, sink: Arc<dyn Sink>) -> Result<()> {
        if self.is_listening()? {
            return Err(Error::invalid_operation(format!("socket {} is listening and cannot connect", self.number)));
        }
        self.check_not_connected()?;
        let mut req = Request::new(OpKind::Connect, UserBuf::EMPTY, 0, None, sink.clone());
        req.connect = Some(Box::new(ConnectPlan { resolving: true, ..Default::default() }));
        self.submit(req)?;
        let me = self.clone();
        super::resolve::resolve(host, port, Some(self.family), Box::new(move |result| me.resolved(&sink, result)));
        Ok(())
    }

    /// The resolver's answer for the connect whose sink is `sink`. If close
    /// already aborted that connect, there is nothing left to do.
    fn resolved(&self, sink: &Arc<dyn Sink>, result: Result<Vec<SocketAddr>>) {
        let mut st = lock(&self.state);
        let State { sock, io, .. } = &mut *st;
        let Some(sock) = sock.as_ref() else {
            return;
        };
        let same = |r: &Request| std::ptr::addr_eq(Arc::as_ptr(&r.sink), Arc::as_ptr(sink));
        let Some(pos) = io.outbound.iter().position(|r| r.is_resolving() && same(r)) else {
            return;
        };
        match result {
            Ok(addrs) => {
                if let Some(plan) = io.outbound[pos].connect.as_mut() {
                    plan.targets = addrs.into();
                    plan.resolving = false;
                }
                if pos == 0 {
                    // A connect does not wait for readiness to start.
                    self.drain(sock, &mut io.outbound, &mut io.write_ready, false);
                }
            }
            Err(e) => {
                let req = io.outbound.remove(pos).expect("position is in range");
                self.trace_completion(req.kind, &Outcome::failed(e.code(), 0), false);
                req.sink.complete(Outcome::failed(e.code(), 0), false, &self.event_loop);
                if pos == 0 {
                    // Nothing was sent for the removed connect, so what is
                    // known of readiness is stale: let the next one try.
                    io.write_ready = true;
                    self.drain(sock, &mut io.outbound, &mut io.write_ready, false);
                }
            }
        }
    }

    fn trace_completion(&self, kind: io::OpKind, outcome: &Outcome, sync: bool) {
        if outcome.error == crate::error::ASOCK_OK {
            trace!(
                LEVEL_VERBOSE,
                "socket",
                "socket {}: {kind:?} completed, {} bytes{}",
                self.number,
                outcome.bytes,
                if sync { " (synchronously)" } else { "" }
            );
        } else {
            trace!(
                LEVEL_ERROR,
                "socket",
                "socket {}: {kind:?} failed: {}",
                self.number,
                crate::error::name(outcome.error).to_string_lossy()
            );
        }
    }

    /// Runs queued operations of one direction until one would block (or a
    /// short stream read says the socket is empty).
    fn drain(&self, sock: &Sock2, queue: &mut std::collections::VecDeque<Request>, ready: &mut bool, closed: bool) {
        while let Some(front) = queue.front_mut() {
            match io::attempt(sock, self, front) {
                Step::Done(outcome) => {
                    let req = queue.pop_front().expect("front exists");
                    self.finish_request(req, outcome, false);
                }
                Step::Drained(outcome) => {
                    let req = queue.pop_front().expect("front exists");
                    self.finish_request(req, outcome, false);
                    if !closed {
                        *ready = false;
                        return;
                    }
                }
                Step::Partial | Step::WouldBlock => {
                    *ready = false;
                    return;
                }
            }
        }
    }

    /// Hands a finished request's outcome to its sink (under the lock).
    fn finish_request(&self, req: Request, outcome: Outcome, synchronously: bool) {
        self.trace_completion(req.kind, &outcome, synchronously);
        req.sink.complete(outcome, synchronously, &self.event_loop);
    }
}

impl Source for Socket {
    fn on_ready(&self, readable: bool, writable: bool, hangup: bool) {
        let mut st = lock(&self.state);
        let State { sock, io, .. } = &mut *st;
        let Some(sock) = sock.as_ref() else {
            return;
        };
        io.read_closed |= hangup;
        if readable {
            io.read_ready = true;
            self.drain(sock, &mut io.inbound, &mut io.read_ready, io.read_closed);
        }
        if writable {
            io.write_ready = true;
            self.drain(sock, &mut io.outbound, &mut io.write_ready, false);
        }
    }

    fn on_loop_closed(&self) {
        let _ = self.close();
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // An accepted connection nobody took, or a socket whose last handle
        // went away: close it the normal way (a no-op if already closed).
        self.close_quietly();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::*;

    fn lp() -> Arc<EventLoop> {
        EventLoop::new().unwrap()
    }

    #[test]
    fn bind_listen_endpoints() {
        let l = lp();
        let s = Socket::new(&l, AddressFamily::Inet, SocketType::Stream, Protocol::Tcp).unwrap();
        assert_eq!(s.local_endpoint().unwrap_err().code(), ASOCK_E_INVALID_OPERATION);
        s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let ep = s.local_endpoint().unwrap();
        assert_ne!(ep.port(), 0);
        assert!(!s.is_listening().unwrap());
        s.listen(16).unwrap();
        assert!(s.is_listening().unwrap());
        assert_eq!(s.remote_endpoint().unwrap_err().code(), ASOCK_NOT_CONNECTED);
        let t = Socket::new(&l, AddressFamily::Inet, SocketType::Stream, Protocol::Unspecified).unwrap();
        assert_eq!(t.bind(ep).unwrap_err().code(), ASOCK_ADDRESS_ALREADY_IN_USE);
        assert_eq!(t.bind("[::1]:0".parse().unwrap()).unwrap_err().code(), ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED);
        s.close().unwrap();
        assert_eq!(s.close().unwrap_err().code(), ASOCK_E_OBJECT_DISPOSED);
        assert_eq!(s.bind(ep).unwrap_err().code(), ASOCK_E_OBJECT_DISPOSED);
        l.close().unwrap();
        assert!(t.is_closed(), "freeing the loop closes its sockets");
    }

    #[test]
    fn bad_combinations_come_from_the_os() {
        let l = lp();
        let e = Socket::new(&l, AddressFamily::Inet, SocketType::Stream, Protocol::Udp).err().unwrap();
        assert_eq!(e.code(), ASOCK_PROTOCOL_NOT_SUPPORTED);
        let u = Socket::new(&l, AddressFamily::Inet6, SocketType::Dgram, Protocol::Udp).unwrap();
        assert_eq!(u.listen(1).unwrap_err().code(), ASOCK_OPERATION_NOT_SUPPORTED);
        assert_eq!(u.set_option(SocketOption::NoDelay, 1).unwrap_err().code(), ASOCK_PROTOCOL_OPTION);
        l.close().unwrap();
    }

    #[test]
    fn every_option_round_trips() {
        use SocketOption::*;
        let l = lp();
        let s = Socket::new(&l, AddressFamily::Inet6, SocketType::Stream, Protocol::Tcp).unwrap();
        for (opt, v) in [
            (NoDelay, 1),
            (ReuseAddress, 1),
            (ReusePort, 1),
            (KeepAlive, 1),
            (LingerSeconds, 0),
            (LingerSeconds, 7),
            (LingerSeconds, -1),
            (Ipv6Only, 1),
            (Ttl, 33),
            (AcceptReceiveTimeoutMs, 1500),
            (AcceptReceiveTimeoutMs, -1),
        ] {
            s.set_option(opt, v).unwrap();
            assert_eq!(s.get_option(opt).unwrap(), v, "{opt:?}");
        }
        s.set_option(SendBufferSize, 65536).unwrap();
        assert!(s.get_option(SendBufferSize).unwrap() >= 65536);
        s.set_option(ReceiveBufferSize, 65536).unwrap();
        assert!(s.get_option(ReceiveBufferSize).unwrap() >= 65536);
        for (opt, v) in [(Ttl, 0), (Ttl, 256), (LingerSeconds, -2), (SendBufferSize, -1), (AcceptReceiveTimeoutMs, 0)] {
            assert_eq!(s.set_option(opt, v).unwrap_err().code(), ASOCK_E_ARGUMENT_OUT_OF_RANGE, "{opt:?}={v}");
        }
        let u = Socket::new(&l, AddressFamily::Inet, SocketType::Dgram, Protocol::Udp).unwrap();
        u.set_option(Broadcast, 1).unwrap();
        assert_eq!(u.get_option(Broadcast).unwrap(), 1);
        assert_eq!(u.set_option(Ipv6Only, 1).unwrap_err().code(), ASOCK_PROTOCOL_OPTION);
        l.close().unwrap();
    }
}
