//! Section 6: SocketAsyncEventArgs operations (seed 001).

use super::endpoint;
use super::handles::{self, SOCKETS};
use super::types::{
    asock_buffer, asock_completed_callback, asock_endpoint, asock_error, asock_event_args, asock_event_args_info,
    asock_socket,
};
use super::{guard, out};
use crate::error::{Error, Result};
use crate::handle::{HandleTable, Kind};
use crate::net::io::UserBuf;
use crate::net::saea::{Completed, EventArgs};
use crate::net::Socket;
use std::ffi::c_void;
use std::sync::Arc;

/// .NET SocketAsyncOperation values, for `asock_event_args_info.last_operation`.
pub const ASOCK_OP_NONE: i32 = 0;
pub const ASOCK_OP_ACCEPT: i32 = 1;
pub const ASOCK_OP_CONNECT: i32 = 2;
pub const ASOCK_OP_DISCONNECT: i32 = 3;
pub const ASOCK_OP_RECEIVE: i32 = 4;
pub const ASOCK_OP_RECEIVE_FROM: i32 = 5;
pub const ASOCK_OP_SEND: i32 = 7;
pub const ASOCK_OP_SEND_TO: i32 = 9;
/// The bytes an accept with a buffer reserves at its end for the local and
/// remote addresses: 2 × (sizeof(SOCKADDR_STORAGE) + 16), as AcceptEx.
pub const ASOCK_ACCEPT_ADDRESS_BYTES: i32 = 288;

#[derive(Clone, Copy, Default)]
pub(crate) struct CCompleted {
    f: asock_completed_callback,
}

impl Completed for CCompleted {
    fn completed(&self, sender: u64, args: u64, user_token: usize) {
        if let Some(f) = self.f {
            // SAFETY: the user's Completed function, called on the loop
            // thread with the token they set, as documented.
            unsafe { f(asock_socket { id: sender }, asock_event_args { id: args }, user_token as *mut c_void) }
        }
    }

    fn released(&self, args: u64) {
        let _ = ARGS.remove(args);
    }
}

type Args = EventArgs<CCompleted>;
static ARGS: HandleTable<Args> = HandleTable::new(Kind::EventArgs);

fn args(e: asock_event_args) -> Result<Arc<Args>> {
    ARGS.get(e.id)
}

/// Creates event args: no buffer, no callback, no AcceptSocket, no remote
/// endpoint, flags none. Free with `asock_event_args_free`. `*out` is
/// written only on success.
#[no_mangle]
pub extern "C" fn asock_event_args_new(out_args: *mut asock_event_args) -> asock_error {
    guard(|| {
        let out_args = out(out_args, "out")?;
        let a = Args::new();
        let id = ARGS.insert(a.clone());
        a.set_id(id);
        *out_args = asock_event_args { id };
        Ok(())
    })
}

/// Frees event args. If an operation is using them, the free waits for it:
/// the operation still completes (its callback runs), then the args go.
/// From this call on, every other call with them but `asock_event_args_get_info`
/// returns `ASOCK_E_OBJECT_DISPOSED`. Freeing `{0}` does nothing; freeing
/// twice → `ASOCK_E_OBJECT_DISPOSED`.
#[no_mangle]
pub extern "C" fn asock_event_args_free(e: asock_event_args) -> asock_error {
    guard(|| {
        if e.id == 0 {
            return Ok(());
        }
        if args(e)?.request_free()? {
            ARGS.remove(e.id)?;
        }
        Ok(())
    })
}

/// Sets the buffer (SetBuffer): `count` bytes at `buf + offset`, owned by the
/// caller, valid and untouched by it while an operation uses them. Negative
/// `offset` or `count` → `ASOCK_E_ARGUMENT_OUT_OF_RANGE`; `buf` NULL with
/// `count` 0 clears it; a buffer list set → `ASOCK_E_ARGUMENT`; args in use →
/// `ASOCK_E_INVALID_OPERATION`.
#[no_mangle]
pub extern "C" fn asock_event_args_set_buffer(
    e: asock_event_args,
    buf: *mut u8,
    offset: i32,
    count: i32,
) -> asock_error {
    guard(|| args(e)?.set_buffer(buf, offset, count))
}

/// Sets a scatter/gather list (BufferList) of `n` buffers, copied (the
/// memory they point to is not: it stays the caller's until the operation
/// completes). Any number of buffers, more than the system's IOV_MAX too.
/// NULL with `n` 0 clears it; a buffer set → `ASOCK_E_ARGUMENT`; a NULL
/// `data` with `len` > 0 → `ASOCK_E_ARGUMENT_NULL`.
#[no_mangle]
pub extern "C" fn asock_event_args_set_buffer_list(
    e: asock_event_args,
    bufs: *const asock_buffer,
    n: usize,
) -> asock_error {
    guard(|| {
        let a = args(e)?;
        if bufs.is_null() {
            if n > 0 {
                return Err(Error::null("bufs"));
            }
            return a.set_buffer_list(None);
        }
        let entries = super::slice(bufs, n);
        let mut list = Vec::with_capacity(n);
        for (i, b) in entries.iter().enumerate() {
            if b.data.is_null() && b.len > 0 {
                return Err(Error::null(&format!("bufs[{i}].data")));
            }
            list.push(UserBuf { ptr: b.data, len: b.len });
        }
        a.set_buffer_list(Some(list))
    })
}

/// Sets the Completed callback (NULL: none).
#[no_mangle]
pub extern "C" fn asock_event_args_set_completed(e: asock_event_args, cb: asock_completed_callback) -> asock_error {
    guard(|| args(e)?.set_completed(CCompleted { f: cb }))
}

/// Sets the user token handed to the Completed callback and in the info.
#[no_mangle]
pub extern "C" fn asock_event_args_set_user_token(e: asock_event_args, user_token: *mut c_void) -> asock_error {
    guard(|| args(e)?.set_user_token(user_token as usize))
}

/// Sets the AcceptSocket: the socket the next accept's connection lands in
/// (unbound and unconnected; it may belong to another loop, whose thread
/// then completes its later operations). `{0}` clears it.
#[no_mangle]
pub extern "C" fn asock_event_args_set_accept_socket(e: asock_event_args, s: asock_socket) -> asock_error {
    guard(|| {
        let a = args(e)?;
        if s.id == 0 {
            return a.set_accept_socket(None);
        }
        let sock = handles::socket(s)?;
        a.set_accept_socket(Some((sock, s.id)))
    })
}

/// Sets the remote endpoint (copied) for connect and send-to; receive-from
/// needs one too, of the socket's family. NULL clears it.
#[no_mangle]
pub extern "C" fn asock_event_args_set_remote_endpoint(e: asock_event_args, ep: *const asock_endpoint) -> asock_error {
    guard(|| {
        let a = args(e)?;
        let ep = if ep.is_null() { None } else { Some(endpoint::arg(ep, "ep")?) };
        a.set_remote_endpoint(ep)
    })
}

/// Sets the `ASOCK_SOCKET_FLAG_*` flags of later sends and receives (other
/// bits → `ASOCK_E_ARGUMENT`).
#[no_mangle]
pub extern "C" fn asock_event_args_set_socket_flags(e: asock_event_args, flags: i32) -> asock_error {
    guard(|| args(e)?.set_socket_flags(flags))
}

/// Reads the results of the last operation into `*out`. Works on args
/// whose free is pending, so a Completed callback can read them.
#[no_mangle]
pub extern "C" fn asock_event_args_get_info(e: asock_event_args, out_info: *mut asock_event_args_info) -> asock_error {
    guard(|| {
        let out_info = out(out_info, "out")?;
        let a = args(e)?;
        let info = a.info();
        // An accepted socket gets its handle when first asked for.
        let accept_socket = asock_socket { id: a.accept_socket_id(|sock| SOCKETS.insert(sock)) };
        *out_info = asock_event_args_info {
            last_operation: info.last_operation as i32,
            socket_error: info.socket_error,
            bytes_transferred: info.bytes_transferred,
            accept_socket,
            remote_endpoint: info.remote_endpoint.map(|a| endpoint::to_c(&a)).unwrap_or_default(),
            user_token: info.user_token as *mut c_void,
        };
        Ok(())
    })
}

/// The local and remote addresses an accept with a buffer stored in the
/// buffer's reserved tail (GetAcceptExSockaddrs). Both out pointers are
/// required; the last operation must have been such an accept, completed
/// (else `ASOCK_E_INVALID_OPERATION`).
#[no_mangle]
pub extern "C" fn asock_event_args_get_accept_endpoints(
    e: asock_event_args,
    local: *mut asock_endpoint,
    remote: *mut asock_endpoint,
) -> asock_error {
    guard(|| {
        let local = out(local, "local")?;
        let remote = out(remote, "remote")?;
        let (l, r) = args(e)?.accept_endpoints()?;
        *local = endpoint::to_c(&l);
        *remote = endpoint::to_c(&r);
        Ok(())
    })
}

/// Shared shape of the `…_async` calls: look both up, start, report.
fn start(
    s: asock_socket,
    e: asock_event_args,
    out_pending: *mut bool,
    op: impl FnOnce(&Arc<Args>, &Arc<Socket>, u64) -> Result<bool>,
) -> asock_error {
    guard(|| {
        let out_pending = out(out_pending, "out_pending")?;
        let socket = handles::socket(s)?;
        let a = args(e)?;
        *out_pending = op(&a, &socket, s.id)?;
        if !*out_pending && a.free_due() {
            let _ = ARGS.remove(e.id);
        }
        Ok(())
    })
}

/// Accepts a connection (AcceptAsync). `*out_pending`: true → the Completed
/// callback will run; false → finished now, the callback will not run, and
/// `asock_event_args_get_info` holds the result. Codes (seed 001): a buffer
/// list set → `ASOCK_E_ARGUMENT`; a buffer shorter than
/// `ASOCK_ACCEPT_ADDRESS_BYTES` → `ASOCK_E_ARGUMENT`; not listening, an
/// AcceptSocket already bound or connected, or args in use →
/// `ASOCK_E_INVALID_OPERATION`; listener closed → `ASOCK_E_OBJECT_DISPOSED`.
/// With a buffer (AcceptEx): completes when the first data arrives, placed at
/// the buffer's offset (`bytes_transferred` ≤ count − 288), the addresses in
/// the reserved tail; no data within the listener's
/// `ASOCK_OPT_ACCEPT_RECEIVE_TIMEOUT_MS`, or a reset first → that connection
/// is reset and the accept completes with `ASOCK_CONNECTION_RESET` and no
/// socket (the half-open scan case).
#[no_mangle]
pub extern "C" fn asock_accept_async(
    listener: asock_socket,
    e: asock_event_args,
    out_pending: *mut bool,
) -> asock_error {
    start(listener, e, out_pending, |a, l, id| a.accept_async(l, id))
}

/// Connects to the args' remote endpoint (ConnectAsync; none set →
/// `ASOCK_E_ARGUMENT_NULL`). `*out_pending` as `asock_accept_async`.
#[no_mangle]
pub extern "C" fn asock_connect_async(s: asock_socket, e: asock_event_args, out_pending: *mut bool) -> asock_error {
    start(s, e, out_pending, |a, sock, id| a.connect_async(sock, id))
}

/// Sends the buffer or buffer list (SendAsync); a stream send completes
/// when all of it is gone. `*out_pending` as `asock_accept_async`.
#[no_mangle]
pub extern "C" fn asock_send_async(s: asock_socket, e: asock_event_args, out_pending: *mut bool) -> asock_error {
    start(s, e, out_pending, |a, sock, id| a.send_async(sock, id, false))
}

/// Receives into the buffer or buffer list (ReceiveAsync). `*out_pending`
/// as `asock_accept_async`.
#[no_mangle]
pub extern "C" fn asock_receive_async(s: asock_socket, e: asock_event_args, out_pending: *mut bool) -> asock_error {
    start(s, e, out_pending, |a, sock, id| a.receive_async(sock, id, false))
}

/// Sends to the args' remote endpoint (SendToAsync; none set →
/// `ASOCK_E_ARGUMENT_NULL`).
#[no_mangle]
pub extern "C" fn asock_send_to_async(s: asock_socket, e: asock_event_args, out_pending: *mut bool) -> asock_error {
    start(s, e, out_pending, |a, sock, id| a.send_async(sock, id, true))
}

/// Receives a datagram and its sender (ReceiveFromAsync); the sender lands
/// in the info's `remote_endpoint`. The args need a remote endpoint set (its
/// family), else `ASOCK_E_ARGUMENT_NULL`.
#[no_mangle]
pub extern "C" fn asock_receive_from_async(
    s: asock_socket,
    e: asock_event_args,
    out_pending: *mut bool,
) -> asock_error {
    start(s, e, out_pending, |a, sock, id| a.receive_async(sock, id, true))
}

/// Disconnects (DisconnectAsync with reuse): shuts the connection down,
/// aborts the socket's pending operations, and leaves the same socket handle
/// ready to connect again. Finishes inside the call (`*out_pending` false);
/// not connected → `socket_error` `ASOCK_NOT_CONNECTED` in the info.
#[no_mangle]
pub extern "C" fn asock_disconnect_async(s: asock_socket, e: asock_event_args, out_pending: *mut bool) -> asock_error {
    start(s, e, out_pending, |a, sock, id| a.disconnect_async(sock, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_bytes_match_the_core() {
        assert_eq!(ASOCK_ACCEPT_ADDRESS_BYTES as usize, crate::net::saea::ACCEPT_ADDRESS_BYTES);
    }
}
