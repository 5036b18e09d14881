//! A socket: a non-blocking descriptor that belongs to one event loop.
//!
//! Every call takes the socket's lock while it touches the descriptor, and
//! `close` takes it to drop the descriptor, so no call can ever act on a
//! number the kernel has already handed to someone else.

use crate::error::{Error, Result, ASOCK_PROTOCOL_OPTION};
use crate::runtime::{EventLoop, Source, SourceKey};
use crate::trace;
use crate::trace::{LEVEL_ERROR, LEVEL_INFO, LEVEL_VERBOSE};
use socket2::{Domain, Protocol as Proto2, SockAddr, Socket as Sock2, Type};
use std::net::{Shutdown, SocketAddr};
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
}

pub struct Socket {
    number: u64,
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
        let socket = Arc::new(Socket {
            number: NEXT_SOCKET_NUMBER.fetch_add(1, Ordering::Relaxed),
            event_loop: event_loop.clone(),
            family,
            kind,
            protocol,
            key: OnceLock::new(),
            state: Mutex::new(State { sock: Some(sock), accept_receive_timeout_ms: DEFAULT_ACCEPT_RECEIVE_TIMEOUT_MS }),
        });
        let weak: std::sync::Weak<dyn Source> = Arc::downgrade(&socket) as _;
        let key = event_loop.attach(weak)?;
        let _ = socket.key.set(key);
        trace!(
            LEVEL_INFO,
            "socket",
            "socket {} created ({family:?} {kind:?} {protocol:?}) on loop {}",
            socket.number,
            event_loop.number()
        );
        Ok(socket)
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
        let State { sock, accept_receive_timeout_ms } = &mut *st;
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
        )
    }

    /// Whether the socket is a listening stream socket.
    pub fn is_listening(&self) -> Result<bool> {
        self.with_sock(
            LEVEL_VERBOSE,
            || "query listening".into(),
            |s, _| {
                if self.kind != SocketType::Stream {
                    return Ok(false);
                }
                s.is_listener().map_err(|e| Error::os(&e, "query SO_ACCEPTCONN"))
            },
        )
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

    /// Dispose: closes the descriptor. A second close is `ObjectDisposed`.
    pub fn close(&self) -> Result<()> {
        let sock = lock(&self.state).sock.take();
        let Some(sock) = sock else {
            return Err(self.disposed());
        };
        if let Some(key) = self.key.get() {
            // Deregister before the descriptor number can be reused.
            self.event_loop.detach(*key);
        }
        drop(sock);
        trace!(LEVEL_INFO, "socket", "socket {} closed", self.number);
        Ok(())
    }
}

impl Source for Socket {
    fn on_ready(&self, _readable: bool, _writable: bool) {
        // No operations are queued on a socket yet (Begin/End arrives with
        // the operation queues); readiness is simply absorbed.
    }

    fn on_loop_closed(&self) {
        let _ = self.close();
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if let Some(sock) = lock(&self.state).sock.take() {
            if let Some(key) = self.key.get() {
                self.event_loop.detach(*key);
            }
            drop(sock);
        }
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
