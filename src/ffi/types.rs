//! The plain C types: the error typedef, handle structs and endpoints.

use std::ffi::c_void;

/// A code of the asock error space: `ASOCK_OK` (0), a .NET SocketError
/// value, or a negative library code (`ASOCK_E_*`).
pub type asock_error = i32;

/// An event loop. Passed by value; `{0}` is the default loop.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct asock_loop {
    pub id: u64,
}

/// A socket. Passed by value; `{0}` is "none". Valid until
/// `asock_socket_close`; afterwards every call with it returns
/// `ASOCK_E_OBJECT_DISPOSED`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct asock_socket {
    pub id: u64,
}

/// An IPv4 or IPv6 endpoint. `family` is `ASOCK_AF_INET` (2) or
/// `ASOCK_AF_INET6` (23); `port` is in host byte order; `addr` holds 4 bytes
/// for IPv4 (network order, the rest ignored) or 16 for IPv6; `flowinfo` and
/// `scope_id` apply to IPv6 only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct asock_endpoint {
    pub family: i32,
    pub port: u16,
    pub addr: [u8; 16],
    pub flowinfo: u32,
    pub scope_id: u32,
}

/// A function run on a loop's thread with the state pointer given to
/// `asock_loop_post`.
pub type asock_post_callback = Option<unsafe extern "C" fn(state: *mut c_void)>;

/// A timer's completion: `status` is `ASOCK_OK` when the delay passed, or
/// `ASOCK_OPERATION_ABORTED` when the timer was cancelled or its loop freed.
pub type asock_timer_callback = Option<unsafe extern "C" fn(state: *mut c_void, status: asock_error)>;

/// A trace record. `category` is "loop", "socket" or "smtp"; `category` and
/// `text` are valid only during the call. Called on whichever thread did the
/// traced work, possibly several at once: the function must be thread-safe.
pub type asock_trace_callback = Option<
    unsafe extern "C" fn(
        level: i32,
        category: *const std::ffi::c_char,
        text: *const std::ffi::c_char,
        userdata: *mut c_void,
    ),
>;

/// One started Begin* operation (.NET's IAsyncResult). Passed by value.
/// Valid from Begin until the matching End*, which frees it; afterwards a
/// second End gives `ASOCK_E_INVALID_OPERATION`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct asock_async_result {
    pub id: u64,
}

/// The completion callback of a Begin* call: runs exactly once, on the
/// thread running the socket's loop, after Begin has returned, with the
/// operation's result handle and the `state` given to Begin. It may call
/// End* (which then does not block) and start further operations.
pub type asock_async_callback = Option<unsafe extern "C" fn(ar: asock_async_result, state: *mut c_void)>;

/// A reusable operation object (.NET SocketAsyncEventArgs). Passed by
/// value; valid until `asock_event_args_free`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct asock_event_args {
    pub id: u64,
}

/// One buffer of a scatter/gather list: `len` bytes at `data`, owned by the
/// caller and valid until the operation using it completes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct asock_buffer {
    pub data: *mut u8,
    pub len: usize,
}

/// The results of an event-args operation (the SocketAsyncEventArgs
/// properties). `accept_socket` is the AcceptSocket given, or the socket an
/// accept made (yours to close); `remote_endpoint` the endpoint set, the
/// sender of a receive-from, or the peer of an accept.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct asock_event_args_info {
    /// `ASOCK_OP_*` (.NET SocketAsyncOperation).
    pub last_operation: i32,
    pub socket_error: asock_error,
    pub bytes_transferred: i32,
    pub accept_socket: asock_socket,
    pub remote_endpoint: asock_endpoint,
    pub user_token: *mut c_void,
}

/// The Completed event: runs exactly once for each operation whose
/// `…_async` call set `*out_pending` to true, on the thread running the
/// loop of the socket that completed it, after the args were marked free
/// (so the callback may start the next operation with them). `sender` is
/// the socket the operation was started on.
pub type asock_completed_callback =
    Option<unsafe extern "C" fn(sender: asock_socket, e: asock_event_args, user_token: *mut c_void)>;

/// A mail message (.NET MailMessage). Passed by value; valid until
/// `asock_mail_message_free`. Any thread; a message is copied when it is
/// sent, so it may be changed or freed right after.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct asock_mail_message {
    pub id: u64,
}

/// An SMTP client (.NET SmtpClient). Passed by value; valid until
/// `asock_smtp_client_free`. Any thread may call its functions; its
/// SendCompleted callback runs on the thread running its loop.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct asock_smtp_client {
    pub id: u64,
}

/// One recipient the server refused. The strings are valid only during
/// the SendCompleted call.
#[repr(C)]
pub struct asock_failed_recipient {
    pub address: *const std::ffi::c_char,
    /// The reply code (.NET SmtpStatusCode), e.g. 550.
    pub status_code: i32,
    /// The server's whole reply, code included.
    pub response: *const std::ffi::c_char,
}

/// The SendCompleted event's arguments (.NET AsyncCompletedEventArgs plus
/// SmtpException's fields). Valid only during the callback: copy what you
/// keep.
#[repr(C)]
pub struct asock_send_completed_args {
    /// `ASOCK_OK`, or why the send failed (`ASOCK_E_SMTP_*`, …;
    /// `ASOCK_OPERATION_ABORTED` when cancelled or the loop was freed).
    pub error: asock_error,
    /// .NET SmtpStatusCode: the deciding reply's code (250 on success), or
    /// -1 (GeneralFailure) when no reply decided it.
    pub status_code: i32,
    /// The socket error underneath (connect refused, reset, timed out), or
    /// `ASOCK_OK`.
    pub socket_error: asock_error,
    /// True when `asock_smtp_client_send_async_cancel` or
    /// `asock_smtp_client_free` ended the send.
    pub cancelled: bool,
    /// The `user_token` given to `asock_smtp_client_send_async`.
    pub user_token: *mut c_void,
    /// The server's reply or an explanation; never NULL.
    pub message: *const std::ffi::c_char,
    /// Every refused recipient, with its code and reply; NULL when none.
    pub failed_recipients: *const asock_failed_recipient,
    pub failed_recipient_count: usize,
}

/// SendCompleted: runs exactly once per successful
/// `asock_smtp_client_send_async`, on the loop's thread, after the client
/// is free for the next send (the callback may start it).
pub type asock_send_completed_callback =
    Option<unsafe extern "C" fn(client: asock_smtp_client, e: *const asock_send_completed_args)>;
