//! Section 4: sockets and their options.

use super::endpoint::{self, ASOCK_AF_INET, ASOCK_AF_INET6};
use super::handles::{self, SOCKETS};
use super::types::{asock_endpoint, asock_error, asock_loop, asock_socket};
use super::{guard, out};
use crate::error::{
    Error, ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED, ASOCK_PROTOCOL_NOT_SUPPORTED, ASOCK_SOCKET_NOT_SUPPORTED,
};
use crate::net::{AddressFamily, Protocol, ShutdownHow, Socket, SocketOption, SocketType};

/// .NET SocketType.Stream.
pub const ASOCK_SOCK_STREAM: i32 = 1;
/// .NET SocketType.Dgram.
pub const ASOCK_SOCK_DGRAM: i32 = 2;
/// The socket type's usual protocol (TCP for streams, UDP for datagrams).
pub const ASOCK_PROTO_UNSPECIFIED: i32 = 0;
pub const ASOCK_PROTO_TCP: i32 = 6;
pub const ASOCK_PROTO_UDP: i32 = 17;

pub const ASOCK_SHUTDOWN_RECEIVE: i32 = 0;
pub const ASOCK_SHUTDOWN_SEND: i32 = 1;
pub const ASOCK_SHUTDOWN_BOTH: i32 = 2;

/// TCP_NODELAY: 1 turns Nagle's batching off (seed 000's "may delay
/// transmission"). Stream sockets only, else `ASOCK_PROTOCOL_OPTION`.
pub const ASOCK_OPT_NO_DELAY: i32 = 1;
/// SO_REUSEADDR, 0 or 1. (Every boolean option takes only 0 or 1; other
/// values → `ASOCK_E_ARGUMENT_OUT_OF_RANGE`.)
pub const ASOCK_OPT_REUSE_ADDRESS: i32 = 2;
/// SO_REUSEPORT, 0 or 1: several listeners (one per loop) share a port.
pub const ASOCK_OPT_REUSE_PORT: i32 = 3;
/// SO_KEEPALIVE, 0 or 1.
pub const ASOCK_OPT_KEEP_ALIVE: i32 = 4;
/// SO_LINGER: -1 off, 0 reset the connection on close, n linger n seconds
/// (n ≤ 65535).
pub const ASOCK_OPT_LINGER_SECONDS: i32 = 5;
/// SO_SNDBUF in bytes (the kernel may report double what was set).
pub const ASOCK_OPT_SEND_BUFFER_SIZE: i32 = 6;
/// SO_RCVBUF in bytes (the kernel may report double what was set).
pub const ASOCK_OPT_RECEIVE_BUFFER_SIZE: i32 = 7;
/// SO_BROADCAST, 0 or 1.
pub const ASOCK_OPT_BROADCAST: i32 = 8;
/// IPV6_V6ONLY, 0 or 1. IPv6 sockets only, else `ASOCK_PROTOCOL_OPTION`.
pub const ASOCK_OPT_IPV6_ONLY: i32 = 9;
/// IP_TTL (IPv4) or IPV6_UNICAST_HOPS (IPv6), 1..255.
pub const ASOCK_OPT_TTL: i32 = 10;
/// On a listener: how long an accept with a receive buffer waits for the
/// connection's first data before resetting it, in ms (1 or more); -1
/// waits forever; 0 → `ASOCK_E_ARGUMENT_OUT_OF_RANGE`. Default 30000. Any
/// socket stores it; only listeners use it.
pub const ASOCK_OPT_ACCEPT_RECEIVE_TIMEOUT_MS: i32 = 11;

fn option(value: i32) -> Result<SocketOption, Error> {
    use SocketOption::*;
    Ok(match value {
        ASOCK_OPT_NO_DELAY => NoDelay,
        ASOCK_OPT_REUSE_ADDRESS => ReuseAddress,
        ASOCK_OPT_REUSE_PORT => ReusePort,
        ASOCK_OPT_KEEP_ALIVE => KeepAlive,
        ASOCK_OPT_LINGER_SECONDS => LingerSeconds,
        ASOCK_OPT_SEND_BUFFER_SIZE => SendBufferSize,
        ASOCK_OPT_RECEIVE_BUFFER_SIZE => ReceiveBufferSize,
        ASOCK_OPT_BROADCAST => Broadcast,
        ASOCK_OPT_IPV6_ONLY => Ipv6Only,
        ASOCK_OPT_TTL => Ttl,
        ASOCK_OPT_ACCEPT_RECEIVE_TIMEOUT_MS => AcceptReceiveTimeoutMs,
        v => return Err(Error::argument(format!("{v} is not an ASOCK_OPT_* option"))),
    })
}

/// Creates a non-blocking socket that belongs to `loop` (`{0}`: the default
/// loop); its operations complete on that loop's thread. Values are .NET's:
/// family `ASOCK_AF_INET`/`ASOCK_AF_INET6` (else
/// `ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED`), type `ASOCK_SOCK_STREAM`/`_DGRAM`
/// (else `ASOCK_SOCKET_NOT_SUPPORTED`), protocol `ASOCK_PROTO_UNSPECIFIED`,
/// `_TCP` or `_UDP` (else, or when it does not fit the type,
/// `ASOCK_PROTOCOL_NOT_SUPPORTED`). Close it with `asock_socket_close`.
/// `*out` is written only on success.
#[no_mangle]
pub extern "C" fn asock_socket_new(
    l: asock_loop,
    address_family: i32,
    socket_type: i32,
    protocol_type: i32,
    out_socket: *mut asock_socket,
) -> asock_error {
    guard(|| {
        let out_socket = out(out_socket, "out")?;
        let family = match address_family {
            ASOCK_AF_INET => AddressFamily::Inet,
            ASOCK_AF_INET6 => AddressFamily::Inet6,
            f => {
                return Err(Error::new(
                    ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED,
                    format!("address family {f} is not ASOCK_AF_INET (2) or ASOCK_AF_INET6 (23)"),
                ))
            }
        };
        let kind = match socket_type {
            ASOCK_SOCK_STREAM => SocketType::Stream,
            ASOCK_SOCK_DGRAM => SocketType::Dgram,
            t => {
                return Err(Error::new(
                    ASOCK_SOCKET_NOT_SUPPORTED,
                    format!("socket type {t} is not ASOCK_SOCK_STREAM (1) or ASOCK_SOCK_DGRAM (2)"),
                ))
            }
        };
        let protocol = match protocol_type {
            ASOCK_PROTO_UNSPECIFIED => Protocol::Unspecified,
            ASOCK_PROTO_TCP => Protocol::Tcp,
            ASOCK_PROTO_UDP => Protocol::Udp,
            p => {
                return Err(Error::new(
                    ASOCK_PROTOCOL_NOT_SUPPORTED,
                    format!("protocol {p} is not ASOCK_PROTO_UNSPECIFIED, _TCP or _UDP"),
                ))
            }
        };
        let lp = handles::event_loop(l)?;
        let socket = Socket::new(&lp, family, kind, protocol)?;
        *out_socket = asock_socket { id: SOCKETS.insert(socket) };
        Ok(())
    })
}

/// Binds to a local endpoint (port 0: the system picks one; read it back
/// with `asock_socket_local_endpoint`). A family other than the socket's →
/// `ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED`; taken → `ASOCK_ADDRESS_ALREADY_IN_USE`.
#[no_mangle]
pub extern "C" fn asock_socket_bind(s: asock_socket, ep: *const asock_endpoint) -> asock_error {
    guard(|| {
        let addr = endpoint::arg(ep, "ep")?;
        handles::socket(s)?.bind(addr)
    })
}

/// Starts listening with a queue of `backlog` pending connections (negative
/// → `ASOCK_E_ARGUMENT_OUT_OF_RANGE`). A datagram socket →
/// `ASOCK_OPERATION_NOT_SUPPORTED`.
#[no_mangle]
pub extern "C" fn asock_socket_listen(s: asock_socket, backlog: i32) -> asock_error {
    guard(|| handles::socket(s)?.listen(backlog))
}

/// The bound local endpoint. Not bound yet → `ASOCK_E_INVALID_OPERATION`.
#[no_mangle]
pub extern "C" fn asock_socket_local_endpoint(s: asock_socket, out_ep: *mut asock_endpoint) -> asock_error {
    guard(|| {
        let out_ep = out(out_ep, "out")?;
        *out_ep = endpoint::to_c(&handles::socket(s)?.local_endpoint()?);
        Ok(())
    })
}

/// The connected peer's endpoint. Not connected → `ASOCK_NOT_CONNECTED`.
#[no_mangle]
pub extern "C" fn asock_socket_remote_endpoint(s: asock_socket, out_ep: *mut asock_endpoint) -> asock_error {
    guard(|| {
        let out_ep = out(out_ep, "out")?;
        *out_ep = endpoint::to_c(&handles::socket(s)?.remote_endpoint()?);
        Ok(())
    })
}

/// Sets an `ASOCK_OPT_*` option (unknown → `ASOCK_E_ARGUMENT`; a value out
/// of the option's range → `ASOCK_E_ARGUMENT_OUT_OF_RANGE`; an option that
/// does not apply to this socket → `ASOCK_PROTOCOL_OPTION`).
#[no_mangle]
pub extern "C" fn asock_socket_set_option(s: asock_socket, opt: i32, value: i32) -> asock_error {
    guard(|| {
        let opt = option(opt)?;
        handles::socket(s)?.set_option(opt, value)
    })
}

/// Reads an `ASOCK_OPT_*` option into `*out` (booleans as 0 or 1).
#[no_mangle]
pub extern "C" fn asock_socket_get_option(s: asock_socket, opt: i32, out_value: *mut i32) -> asock_error {
    guard(|| {
        let out_value = out(out_value, "out")?;
        let opt = option(opt)?;
        *out_value = handles::socket(s)?.get_option(opt)?;
        Ok(())
    })
}

/// Shuts down one or both directions: `ASOCK_SHUTDOWN_RECEIVE`, `_SEND`,
/// `_BOTH` (else `ASOCK_E_ARGUMENT`). Not connected, or a listening socket →
/// `ASOCK_NOT_CONNECTED`.
#[no_mangle]
pub extern "C" fn asock_socket_shutdown(s: asock_socket, how: i32) -> asock_error {
    guard(|| {
        let how = match how {
            ASOCK_SHUTDOWN_RECEIVE => ShutdownHow::Receive,
            ASOCK_SHUTDOWN_SEND => ShutdownHow::Send,
            ASOCK_SHUTDOWN_BOTH => ShutdownHow::Both,
            h => return Err(Error::argument(format!("{h} is not ASOCK_SHUTDOWN_RECEIVE, _SEND or _BOTH"))),
        };
        handles::socket(s)?.shutdown(how)
    })
}

/// Closes the socket (.NET Dispose) and frees the handle: every pending
/// operation completes exactly once, and every later call with the handle
/// returns `ASOCK_E_OBJECT_DISPOSED` (so does a second close). A socket whose
/// loop was freed is already closed; closing its handle still succeeds once.
#[no_mangle]
pub extern "C" fn asock_socket_close(s: asock_socket) -> asock_error {
    guard(|| {
        let socket = SOCKETS.remove(s.id)?;
        if !socket.is_closed() {
            socket.close()?;
        }
        Ok(())
    })
}
