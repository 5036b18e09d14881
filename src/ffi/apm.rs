//! Section 5: Begin/End, the .NET APM pattern (seed 000).

use super::endpoint;
use super::handles::{self, SOCKETS};
use super::types::{asock_async_callback, asock_async_result, asock_endpoint, asock_error, asock_socket};
use super::{c_str, fail, guard, guard_value, out, UserPtr};
use crate::error::{Error, Result, ASOCK_E_OBJECT_DISPOSED, ASOCK_OK};
use crate::handle::{HandleTable, Kind};
use crate::net::apm::{AsyncResult, Notify, Pool};
use crate::net::io::{socket_flags, OpKind, Outcome, Sink, UserBuf};
use crate::net::Socket;
use std::ffi::{c_char, c_void};
use std::sync::Arc;
use std::time::Duration;

/// .NET SocketFlags.None.
pub const ASOCK_SOCKET_FLAG_NONE: i32 = 0;
/// .NET SocketFlags.OutOfBand (MSG_OOB).
pub const ASOCK_SOCKET_FLAG_OUT_OF_BAND: i32 = 1;
/// .NET SocketFlags.Peek (MSG_PEEK): receive without removing the data.
pub const ASOCK_SOCKET_FLAG_PEEK: i32 = 2;
/// .NET SocketFlags.DontRoute (MSG_DONTROUTE).
pub const ASOCK_SOCKET_FLAG_DONT_ROUTE: i32 = 4;

/// The user's callback and state, called on the loop thread.
#[derive(Clone, Copy)]
pub(crate) struct CCallback {
    f: unsafe extern "C" fn(asock_async_result, *mut c_void),
    state: UserPtr,
}

impl Notify for CCallback {
    fn notify(&self, id: u64) {
        // SAFETY: the user's function, called with the state they gave, on
        // the loop thread, as documented on asock_async_callback.
        unsafe { (self.f)(asock_async_result { id }, self.state.0) }
    }
}

type Ar = AsyncResult<CCallback>;
static POOL: Pool<CCallback> = Pool::new();
static RESULTS: HandleTable<Ar> = HandleTable::new(Kind::AsyncResult);

/// Creates the result, submits with `start`, and writes `*out` on success.
fn begin(
    s: asock_socket,
    kind: OpKind,
    cb: asock_async_callback,
    state: *mut c_void,
    out_ar: *mut asock_async_result,
    start: impl FnOnce(&Arc<Socket>, Arc<dyn Sink>) -> Result<()>,
) -> Result<()> {
    let out_ar = out(out_ar, "out")?;
    let socket = handles::socket(s)?;
    let ar = POOL.take();
    ar.start(kind, socket.clone(), cb.map(|f| CCallback { f, state: UserPtr(state) }), state as usize);
    let id = RESULTS.insert(ar.clone());
    ar.set_id(id);
    match start(&socket, ar.clone()) {
        Ok(()) => {
            *out_ar = asock_async_result { id };
            Ok(())
        }
        Err(e) => {
            let _ = RESULTS.remove(id);
            ar.discard();
            Err(e)
        }
    }
}

/// Checks a caller's buffer and wraps it.
fn user_buf(buf: *const u8, len: usize) -> Result<UserBuf> {
    if buf.is_null() && len > 0 {
        return Err(Error::null("buf"));
    }
    if len > i32::MAX as usize {
        return Err(Error::out_of_range(format!(
            "length {len} is larger than INT32_MAX, the largest count End can return"
        )));
    }
    Ok(UserBuf { ptr: buf as *mut u8, len })
}

fn kind_name(kind: OpKind) -> &'static str {
    match kind {
        OpKind::Connect => "asock_begin_connect",
        OpKind::Accept => "asock_begin_accept",
        OpKind::Send => "asock_begin_send",
        OpKind::Receive => "asock_begin_receive",
        OpKind::SendTo => "asock_begin_send_to",
        OpKind::ReceiveFrom => "asock_begin_receive_from",
    }
}

/// A result handle for reading: stale means End already freed it.
fn lookup(ar: asock_async_result) -> Result<Arc<Ar>> {
    if ar.id == 0 {
        return Err(Error::null("the async result"));
    }
    RESULTS.get(ar.id).map_err(|e| {
        if e.code() == ASOCK_E_OBJECT_DISPOSED {
            Error::invalid_operation("End has already been called for this async result")
        } else {
            e
        }
    })
}

/// The checks every End* makes, in .NET's order, then End itself: the
/// result must exist (else ArgumentNull / InvalidOperation), come from the
/// right Begin (else Argument, and the result stays usable), and End may not
/// block on the loop thread that must complete it.
fn end(ar: asock_async_result, kinds: &[OpKind], end_name: &str) -> Result<Outcome> {
    let r = lookup(ar)?;
    let kind = r.kind();
    if !kinds.contains(&kind) {
        return Err(Error::argument(format!(
            "this async result was returned by {}, not by the Begin of {end_name}",
            kind_name(kind)
        )));
    }
    if !r.may_wait_here() {
        return Err(Error::invalid_operation(format!(
            "{end_name} before completion on the socket's loop thread would deadlock; call it from the callback or another thread"
        )));
    }
    drop(r);
    // Removing the handle is what claims the End: a racing second End finds
    // it gone.
    let r = RESULTS
        .remove(ar.id)
        .map_err(|_| Error::invalid_operation("End has already been called for this async result"))?;
    r.end()
}

/// End* that return a count: the count, or -1 with the error; a stream send
/// stopped by an error after some bytes went returns that count and the
/// error.
fn end_count(
    ar: asock_async_result,
    kinds: &[OpKind],
    name: &str,
    error_code: *mut asock_error,
    from: Option<*mut asock_endpoint>,
) -> i32 {
    let mut code = ASOCK_OK;
    let n = guard_value(-1, || {
        let result = (|| {
            if let Some(p) = from {
                out(p, "out_from")?;
            }
            let outcome = end(ar, kinds, name)?;
            if outcome.error != ASOCK_OK {
                let detail = format!("{name}: {}", crate::error::description(outcome.error));
                code = fail(&Error::new(outcome.error, detail));
                let sends = kinds.contains(&OpKind::Send) || kinds.contains(&OpKind::SendTo);
                return Ok(if outcome.bytes > 0 && sends { outcome.bytes as i32 } else { -1 });
            }
            if let (Some(p), Some(addr)) = (from, outcome.from) {
                *out(p, "out_from")? = endpoint::to_c(&addr);
            }
            Ok(outcome.bytes as i32)
        })();
        match result {
            Ok(n) => n,
            Err(e) => {
                code = fail(&e);
                -1
            }
        }
    });
    if !error_code.is_null() {
        // SAFETY: a non-NULL out pointer from the caller.
        unsafe { *error_code = code };
    }
    n
}

/// Begins connecting to `ep` (.NET BeginConnect). The endpoint's family must
/// be the socket's (else `ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED`); a listening
/// socket → `ASOCK_E_INVALID_OPERATION`. A refused connect completes with
/// `ASOCK_CONNECTION_REFUSED` at End. `cb` may be NULL (then End or
/// `asock_async_result_wait` observe completion). `*out` receives the result
/// handle, to be passed to `asock_end_connect` exactly once.
#[no_mangle]
pub extern "C" fn asock_begin_connect(
    s: asock_socket,
    ep: *const asock_endpoint,
    cb: asock_async_callback,
    state: *mut c_void,
    out_ar: *mut asock_async_result,
) -> asock_error {
    guard(|| {
        let addr = endpoint::arg(ep, "ep")?;
        begin(s, OpKind::Connect, cb, state, out_ar, |sock, sink| sock.start_connect(vec![addr], sink))
    })
}

/// Begins connecting to `host` (a name or an address literal) on `port`
/// (1..65535, else `ASOCK_E_ARGUMENT_OUT_OF_RANGE`). The name is resolved on
/// a resolver thread, never on the loop, to addresses of the socket's
/// family, tried in order. A name that does not resolve completes with
/// `ASOCK_HOST_NOT_FOUND`, `ASOCK_TRY_AGAIN`, `ASOCK_NO_RECOVERY` or
/// `ASOCK_NO_DATA` at End. `host` is copied.
#[no_mangle]
pub extern "C" fn asock_begin_connect_host(
    s: asock_socket,
    host: *const c_char,
    port: u16,
    cb: asock_async_callback,
    state: *mut c_void,
    out_ar: *mut asock_async_result,
) -> asock_error {
    guard(|| {
        let host = c_str(host, "host")?;
        if host.is_empty() {
            return Err(Error::argument("host is empty"));
        }
        if port == 0 {
            return Err(Error::out_of_range("port 0 cannot be connected to"));
        }
        let literal: Option<std::net::IpAddr> = host.trim_start_matches('[').trim_end_matches(']').parse().ok();
        begin(s, OpKind::Connect, cb, state, out_ar, |sock, sink| match literal {
            Some(ip) => sock.start_connect(vec![std::net::SocketAddr::new(ip, port)], sink),
            None => sock.start_connect_host(host, port, sink),
        })
    })
}

/// Ends a connect: `ASOCK_OK`, or the socket error that stopped it. The
/// result checks of `asock_end_send` apply.
#[no_mangle]
pub extern "C" fn asock_end_connect(ar: asock_async_result) -> asock_error {
    guard(|| {
        let outcome = end(ar, &[OpKind::Connect], "asock_end_connect")?;
        if outcome.error != ASOCK_OK {
            return Err(Error::new(outcome.error, format!("connect: {}", crate::error::description(outcome.error))));
        }
        Ok(())
    })
}

/// Begins accepting a connection on a listening socket (not listening →
/// `ASOCK_E_INVALID_OPERATION`). The accepted socket belongs to the
/// listener's loop.
#[no_mangle]
pub extern "C" fn asock_begin_accept(
    listener: asock_socket,
    cb: asock_async_callback,
    state: *mut c_void,
    out_ar: *mut asock_async_result,
) -> asock_error {
    guard(|| begin(listener, OpKind::Accept, cb, state, out_ar, |sock, sink| sock.start_accept(sink)))
}

/// Ends an accept: `*out_accepted` receives the new connection's socket
/// (yours to close). `out_accepted` NULL → `ASOCK_E_ARGUMENT_NULL` (and the
/// result stays pending for a corrected call).
#[no_mangle]
pub extern "C" fn asock_end_accept(ar: asock_async_result, out_accepted: *mut asock_socket) -> asock_error {
    guard(|| {
        let out_accepted = out(out_accepted, "out_accepted")?;
        let outcome = end(ar, &[OpKind::Accept], "asock_end_accept")?;
        if outcome.error != ASOCK_OK {
            return Err(Error::new(outcome.error, format!("accept: {}", crate::error::description(outcome.error))));
        }
        let accepted = outcome
            .accepted
            .ok_or_else(|| Error::new(crate::error::ASOCK_E_INTERNAL, "accept completed without a socket"))?;
        *out_accepted = asock_socket { id: SOCKETS.insert(accepted) };
        Ok(())
    })
}

/// Begins sending `len` bytes of `buf` (.NET BeginSend). `flags` is a
/// combination of `ASOCK_SOCKET_FLAG_*` (other bits → `ASOCK_E_ARGUMENT`).
/// `buf` stays the caller's and must stay valid and unchanged until the
/// operation completes (the callback ran or End returned). On a stream
/// socket the send completes when all `len` bytes are gone, or an error
/// stops it; on a datagram socket when the datagram is sent. `len` above
/// INT32_MAX → `ASOCK_E_ARGUMENT_OUT_OF_RANGE`.
#[no_mangle]
pub extern "C" fn asock_begin_send(
    s: asock_socket,
    buf: *const u8,
    len: usize,
    flags: i32,
    cb: asock_async_callback,
    state: *mut c_void,
    out_ar: *mut asock_async_result,
) -> asock_error {
    guard(|| {
        let buf = user_buf(buf, len)?;
        let flags = socket_flags(flags)?;
        begin(s, OpKind::Send, cb, state, out_ar, |sock, sink| sock.start_send(buf, flags, None, sink))
    })
}

/// Ends a send (seed 000's EndSend(IAsyncResult, out SocketError)): returns
/// the bytes sent and sets `*error_code` to `ASOCK_OK`; or returns -1 with
/// `*error_code` set: `ASOCK_E_ARGUMENT_NULL` for the none result,
/// `ASOCK_E_ARGUMENT` for a result of another Begin kind (the result stays
/// valid), `ASOCK_E_INVALID_OPERATION` when End was already called (or
/// when called before completion on the socket's loop thread),
/// `ASOCK_E_OBJECT_DISPOSED` when the socket was closed, or the socket
/// error. If an error stopped a stream send after some bytes went, returns
/// that count with the error in `*error_code`. Called before completion, it
/// blocks until done. Frees the result. `error_code` may be NULL.
#[no_mangle]
pub extern "C" fn asock_end_send(ar: asock_async_result, error_code: *mut asock_error) -> i32 {
    end_count(ar, &[OpKind::Send], "asock_end_send", error_code, None)
}

/// Begins receiving up to `len` bytes into `buf` (.NET BeginReceive). It
/// completes with the bytes available (0: the peer shut down its side). A
/// zero-length receive on a stream socket completes when data is available,
/// taking none. A datagram larger than `len` completes with
/// `ASOCK_MESSAGE_SIZE`, the buffer holding its first `len` bytes. `buf`
/// must stay valid until completion and is written only by asock until then.
#[no_mangle]
pub extern "C" fn asock_begin_receive(
    s: asock_socket,
    buf: *mut u8,
    len: usize,
    flags: i32,
    cb: asock_async_callback,
    state: *mut c_void,
    out_ar: *mut asock_async_result,
) -> asock_error {
    guard(|| {
        let buf = user_buf(buf, len)?;
        let flags = socket_flags(flags)?;
        begin(s, OpKind::Receive, cb, state, out_ar, |sock, sink| sock.start_receive(buf, flags, false, sink))
    })
}

/// Ends a receive: the byte count, or -1 with `*error_code` set (the checks
/// of `asock_end_send`). `error_code` may be NULL.
#[no_mangle]
pub extern "C" fn asock_end_receive(ar: asock_async_result, error_code: *mut asock_error) -> i32 {
    end_count(ar, &[OpKind::Receive], "asock_end_receive", error_code, None)
}

/// Begins sending one datagram (or stream data) to `to` (.NET BeginSendTo);
/// `to` is copied. Buffer rules as `asock_begin_send`.
#[no_mangle]
pub extern "C" fn asock_begin_send_to(
    s: asock_socket,
    buf: *const u8,
    len: usize,
    flags: i32,
    to: *const asock_endpoint,
    cb: asock_async_callback,
    state: *mut c_void,
    out_ar: *mut asock_async_result,
) -> asock_error {
    guard(|| {
        let buf = user_buf(buf, len)?;
        let flags = socket_flags(flags)?;
        let to = endpoint::arg(to, "to")?;
        begin(s, OpKind::SendTo, cb, state, out_ar, |sock, sink| sock.start_send(buf, flags, Some(to), sink))
    })
}

/// Ends a send-to: as `asock_end_send`.
#[no_mangle]
pub extern "C" fn asock_end_send_to(ar: asock_async_result, error_code: *mut asock_error) -> i32 {
    end_count(ar, &[OpKind::SendTo], "asock_end_send_to", error_code, None)
}

/// Begins receiving one datagram and its sender (.NET BeginReceiveFrom).
/// Buffer rules as `asock_begin_receive`.
#[no_mangle]
pub extern "C" fn asock_begin_receive_from(
    s: asock_socket,
    buf: *mut u8,
    len: usize,
    flags: i32,
    cb: asock_async_callback,
    state: *mut c_void,
    out_ar: *mut asock_async_result,
) -> asock_error {
    guard(|| {
        let buf = user_buf(buf, len)?;
        let flags = socket_flags(flags)?;
        begin(s, OpKind::ReceiveFrom, cb, state, out_ar, |sock, sink| sock.start_receive(buf, flags, true, sink))
    })
}

/// Ends a receive-from: the byte count with the sender in `*out_from`, or -1
/// with `*error_code` set (the checks of `asock_end_send`; `out_from` NULL →
/// `ASOCK_E_ARGUMENT_NULL`, the result stays pending). `error_code` may be
/// NULL.
#[no_mangle]
pub extern "C" fn asock_end_receive_from(
    ar: asock_async_result,
    out_from: *mut asock_endpoint,
    error_code: *mut asock_error,
) -> i32 {
    end_count(ar, &[OpKind::ReceiveFrom], "asock_end_receive_from", error_code, Some(out_from))
}

/// Whether the operation has completed (.NET IsCompleted). False, with the
/// reason in `asock_error_message`, for an invalid or ended result.
#[no_mangle]
pub extern "C" fn asock_async_result_is_completed(ar: asock_async_result) -> bool {
    guard_value(false, || match lookup(ar) {
        Ok(r) => r.is_completed(),
        Err(e) => {
            fail(&e);
            false
        }
    })
}

/// Whether the operation finished inside its Begin call (.NET
/// CompletedSynchronously); its callback still runs later on the loop
/// thread. False for an invalid or ended result.
#[no_mangle]
pub extern "C" fn asock_async_result_completed_synchronously(ar: asock_async_result) -> bool {
    guard_value(false, || match lookup(ar) {
        Ok(r) => r.completed_synchronously(),
        Err(e) => {
            fail(&e);
            false
        }
    })
}

/// The `state` given to Begin (.NET AsyncState); NULL for an invalid or
/// ended result.
#[no_mangle]
pub extern "C" fn asock_async_result_state(ar: asock_async_result) -> *mut c_void {
    guard_value(std::ptr::null_mut(), || match lookup(ar) {
        Ok(r) => r.user_state() as *mut c_void,
        Err(e) => {
            fail(&e);
            std::ptr::null_mut()
        }
    })
}

/// Waits up to `timeout_ms` (-1: without limit) for the operation to
/// complete (.NET AsyncWaitHandle.WaitOne); `*out_completed` says whether it
/// did. On the socket's loop thread, waiting for an uncompleted operation →
/// `ASOCK_E_INVALID_OPERATION`. Does not end the operation.
#[no_mangle]
pub extern "C" fn asock_async_result_wait(
    ar: asock_async_result,
    timeout_ms: i32,
    out_completed: *mut bool,
) -> asock_error {
    guard(|| {
        let out_completed = out(out_completed, "out_completed")?;
        let timeout = match timeout_ms {
            -1 => None,
            t if t >= 0 => Some(Duration::from_millis(t as u64)),
            t => return Err(Error::out_of_range(format!("timeout {t} ms is not -1 or >= 0"))),
        };
        *out_completed = lookup(ar)?.wait(timeout)?;
        Ok(())
    })
}
