//! The one error number space of asock.
//!
//! Three ranges share one `i32`: 0 is success; the .NET `SocketError` values
//! keep their numbers (`-1`, `995`, `997`, `10004`…`11004`); library codes that
//! stand for the .NET exception classes are negative from `-1001`, and the SMTP
//! outcomes from `-1100`. The names are the .NET names, so a user reading
//! `ConnectionReset` in a log knows exactly which condition it is.
//!
//! The `ASOCK_*` constants live here (not in `ffi`) because they *are* the
//! number space the core reports in; `ffi` only passes them through.

use std::cell::RefCell;
use std::fmt;
use std::io;

pub const ASOCK_OK: i32 = 0;

// --- .NET SocketError values, same numbers ---------------------------------
pub const ASOCK_SOCKET_ERROR: i32 = -1;
pub const ASOCK_OPERATION_ABORTED: i32 = 995;
pub const ASOCK_IO_PENDING: i32 = 997;
pub const ASOCK_INTERRUPTED: i32 = 10004;
pub const ASOCK_ACCESS_DENIED: i32 = 10013;
pub const ASOCK_FAULT: i32 = 10014;
pub const ASOCK_INVALID_ARGUMENT: i32 = 10022;
pub const ASOCK_TOO_MANY_OPEN_SOCKETS: i32 = 10024;
pub const ASOCK_WOULD_BLOCK: i32 = 10035;
pub const ASOCK_IN_PROGRESS: i32 = 10036;
pub const ASOCK_ALREADY_IN_PROGRESS: i32 = 10037;
pub const ASOCK_NOT_SOCKET: i32 = 10038;
pub const ASOCK_DESTINATION_ADDRESS_REQUIRED: i32 = 10039;
pub const ASOCK_MESSAGE_SIZE: i32 = 10040;
pub const ASOCK_PROTOCOL_TYPE: i32 = 10041;
pub const ASOCK_PROTOCOL_OPTION: i32 = 10042;
pub const ASOCK_PROTOCOL_NOT_SUPPORTED: i32 = 10043;
pub const ASOCK_SOCKET_NOT_SUPPORTED: i32 = 10044;
pub const ASOCK_OPERATION_NOT_SUPPORTED: i32 = 10045;
pub const ASOCK_PROTOCOL_FAMILY_NOT_SUPPORTED: i32 = 10046;
pub const ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED: i32 = 10047;
pub const ASOCK_ADDRESS_ALREADY_IN_USE: i32 = 10048;
pub const ASOCK_ADDRESS_NOT_AVAILABLE: i32 = 10049;
pub const ASOCK_NETWORK_DOWN: i32 = 10050;
pub const ASOCK_NETWORK_UNREACHABLE: i32 = 10051;
pub const ASOCK_NETWORK_RESET: i32 = 10052;
pub const ASOCK_CONNECTION_ABORTED: i32 = 10053;
pub const ASOCK_CONNECTION_RESET: i32 = 10054;
pub const ASOCK_NO_BUFFER_SPACE_AVAILABLE: i32 = 10055;
pub const ASOCK_IS_CONNECTED: i32 = 10056;
pub const ASOCK_NOT_CONNECTED: i32 = 10057;
pub const ASOCK_SHUTDOWN: i32 = 10058;
pub const ASOCK_TIMED_OUT: i32 = 10060;
pub const ASOCK_CONNECTION_REFUSED: i32 = 10061;
pub const ASOCK_HOST_DOWN: i32 = 10064;
pub const ASOCK_HOST_UNREACHABLE: i32 = 10065;
pub const ASOCK_PROCESS_LIMIT: i32 = 10067;
pub const ASOCK_DISCONNECTING: i32 = 10101;
pub const ASOCK_HOST_NOT_FOUND: i32 = 11001;
pub const ASOCK_TRY_AGAIN: i32 = 11002;
pub const ASOCK_NO_RECOVERY: i32 = 11003;
pub const ASOCK_NO_DATA: i32 = 11004;

// --- library codes for the .NET exception classes --------------------------
pub const ASOCK_E_ARGUMENT_NULL: i32 = -1001;
pub const ASOCK_E_ARGUMENT: i32 = -1002;
pub const ASOCK_E_ARGUMENT_OUT_OF_RANGE: i32 = -1003;
pub const ASOCK_E_INVALID_OPERATION: i32 = -1004;
pub const ASOCK_E_OBJECT_DISPOSED: i32 = -1005;
pub const ASOCK_E_NOT_SUPPORTED: i32 = -1006;
pub const ASOCK_E_FORMAT: i32 = -1007;
pub const ASOCK_E_IO: i32 = -1008;
pub const ASOCK_E_INTERNAL: i32 = -1099;

// --- SMTP outcomes ---------------------------------------------------------
pub const ASOCK_E_SMTP: i32 = -1100;
pub const ASOCK_E_SMTP_CONNECT: i32 = -1101;
pub const ASOCK_E_SMTP_AUTHENTICATION: i32 = -1102;
pub const ASOCK_E_SMTP_TIMEOUT: i32 = -1103;
pub const ASOCK_E_SMTP_STARTTLS_UNAVAILABLE: i32 = -1104;
pub const ASOCK_E_SMTP_TLS: i32 = -1105;
pub const ASOCK_E_SMTP_CERTIFICATE: i32 = -1106;
pub const ASOCK_E_SMTP_FAILED_RECIPIENTS: i32 = -1107;
pub const ASOCK_E_SMTP_PROTOCOL: i32 = -1108;

/// Every code with its .NET name and a default description. The names are
/// NUL-terminated so `asock_error_name` can hand them out without copying.
static CODES: &[(i32, &std::ffi::CStr, &str)] = &[
    (ASOCK_OK, c"Success", "the operation succeeded"),
    (ASOCK_SOCKET_ERROR, c"SocketError", "an unspecified socket error occurred"),
    (ASOCK_OPERATION_ABORTED, c"OperationAborted", "the operation was aborted because the socket was closed"),
    (ASOCK_IO_PENDING, c"IOPending", "the operation is pending"),
    (ASOCK_INTERRUPTED, c"Interrupted", "a blocking call was interrupted"),
    (ASOCK_ACCESS_DENIED, c"AccessDenied", "access to the socket was denied"),
    (ASOCK_FAULT, c"Fault", "an invalid pointer address was passed to the system"),
    (ASOCK_INVALID_ARGUMENT, c"InvalidArgument", "the system rejected an argument"),
    (ASOCK_TOO_MANY_OPEN_SOCKETS, c"TooManyOpenSockets", "too many open sockets or files"),
    (ASOCK_WOULD_BLOCK, c"WouldBlock", "the operation would block"),
    (ASOCK_IN_PROGRESS, c"InProgress", "a blocking operation is in progress"),
    (ASOCK_ALREADY_IN_PROGRESS, c"AlreadyInProgress", "an operation is already in progress"),
    (ASOCK_NOT_SOCKET, c"NotSocket", "the operation was attempted on a non-socket"),
    (ASOCK_DESTINATION_ADDRESS_REQUIRED, c"DestinationAddressRequired", "a destination address is required"),
    (ASOCK_MESSAGE_SIZE, c"MessageSize", "the datagram is too long"),
    (ASOCK_PROTOCOL_TYPE, c"ProtocolType", "the protocol type is wrong for this socket"),
    (ASOCK_PROTOCOL_OPTION, c"ProtocolOption", "an unknown or unsupported option was used"),
    (ASOCK_PROTOCOL_NOT_SUPPORTED, c"ProtocolNotSupported", "the protocol is not supported"),
    (ASOCK_SOCKET_NOT_SUPPORTED, c"SocketNotSupported", "the socket type is not supported in this address family"),
    (ASOCK_OPERATION_NOT_SUPPORTED, c"OperationNotSupported", "the operation is not supported on this socket"),
    (ASOCK_PROTOCOL_FAMILY_NOT_SUPPORTED, c"ProtocolFamilyNotSupported", "the protocol family is not supported"),
    (ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED, c"AddressFamilyNotSupported", "the address family is not supported"),
    (ASOCK_ADDRESS_ALREADY_IN_USE, c"AddressAlreadyInUse", "the address is already in use"),
    (ASOCK_ADDRESS_NOT_AVAILABLE, c"AddressNotAvailable", "the address is not valid in this context"),
    (ASOCK_NETWORK_DOWN, c"NetworkDown", "the network is down"),
    (ASOCK_NETWORK_UNREACHABLE, c"NetworkUnreachable", "the network is unreachable"),
    (ASOCK_NETWORK_RESET, c"NetworkReset", "the connection was broken by a network reset"),
    (ASOCK_CONNECTION_ABORTED, c"ConnectionAborted", "the connection was aborted"),
    (ASOCK_CONNECTION_RESET, c"ConnectionReset", "the connection was reset by the peer"),
    (ASOCK_NO_BUFFER_SPACE_AVAILABLE, c"NoBufferSpaceAvailable", "no buffer space is available"),
    (ASOCK_IS_CONNECTED, c"IsConnected", "the socket is already connected"),
    (ASOCK_NOT_CONNECTED, c"NotConnected", "the socket is not connected"),
    (ASOCK_SHUTDOWN, c"Shutdown", "the socket has been shut down in that direction"),
    (ASOCK_TIMED_OUT, c"TimedOut", "the connection attempt timed out"),
    (ASOCK_CONNECTION_REFUSED, c"ConnectionRefused", "the remote host refused the connection"),
    (ASOCK_HOST_DOWN, c"HostDown", "the remote host is down"),
    (ASOCK_HOST_UNREACHABLE, c"HostUnreachable", "there is no route to the host"),
    (ASOCK_PROCESS_LIMIT, c"ProcessLimit", "too many processes use the socket layer"),
    (ASOCK_DISCONNECTING, c"Disconnecting", "a graceful shutdown is in progress"),
    (ASOCK_HOST_NOT_FOUND, c"HostNotFound", "no such host is known"),
    (ASOCK_TRY_AGAIN, c"TryAgain", "the name could not be resolved now; try again"),
    (ASOCK_NO_RECOVERY, c"NoRecovery", "a non-recoverable name resolution error occurred"),
    (ASOCK_NO_DATA, c"NoData", "the name is valid but has no address of the requested type"),
    (ASOCK_E_ARGUMENT_NULL, c"ArgumentNull", "a required argument is NULL or the none handle"),
    (ASOCK_E_ARGUMENT, c"Argument", "an argument is not valid"),
    (ASOCK_E_ARGUMENT_OUT_OF_RANGE, c"ArgumentOutOfRange", "an argument is out of range"),
    (ASOCK_E_INVALID_OPERATION, c"InvalidOperation", "the operation is not valid in the object's current state"),
    (ASOCK_E_OBJECT_DISPOSED, c"ObjectDisposed", "the object has been closed or freed"),
    (ASOCK_E_NOT_SUPPORTED, c"NotSupported", "the operation is not supported"),
    (ASOCK_E_FORMAT, c"Format", "the text is not in a valid format"),
    (ASOCK_E_IO, c"IO", "an input/output error occurred"),
    (ASOCK_E_INTERNAL, c"Internal", "an internal error occurred in asock"),
    (ASOCK_E_SMTP, c"Smtp", "the SMTP server gave an unexpected or negative reply"),
    (ASOCK_E_SMTP_CONNECT, c"SmtpConnect", "could not connect to the SMTP server"),
    (ASOCK_E_SMTP_AUTHENTICATION, c"SmtpAuthentication", "SMTP authentication failed"),
    (ASOCK_E_SMTP_TIMEOUT, c"SmtpTimeout", "the SMTP operation timed out"),
    (ASOCK_E_SMTP_STARTTLS_UNAVAILABLE, c"SmtpStartTlsUnavailable", "the server did not offer STARTTLS"),
    (ASOCK_E_SMTP_TLS, c"SmtpTls", "the TLS handshake with the SMTP server failed"),
    (ASOCK_E_SMTP_CERTIFICATE, c"SmtpCertificate", "the SMTP server's certificate is not valid"),
    (ASOCK_E_SMTP_FAILED_RECIPIENTS, c"SmtpFailedRecipients", "the server rejected one or more recipients"),
    (ASOCK_E_SMTP_PROTOCOL, c"SmtpProtocol", "the SMTP conversation broke the protocol"),
];

fn lookup(code: i32) -> Option<&'static (i32, &'static std::ffi::CStr, &'static str)> {
    CODES.iter().find(|(c, _, _)| *c == code)
}

/// The .NET name of a code ("ConnectionReset"), or "Unknown".
pub fn name(code: i32) -> &'static std::ffi::CStr {
    lookup(code).map(|e| e.1).unwrap_or(c"Unknown")
}

/// A one-line English description of a code.
pub fn description(code: i32) -> &'static str {
    lookup(code).map(|e| e.2).unwrap_or("unknown error code")
}

/// Whether `code` is one of the codes of the number space.
pub fn is_known(code: i32) -> bool {
    lookup(code).is_some()
}

/// All codes, for tests and for bindings that want to mirror the table.
pub fn all_codes() -> impl Iterator<Item = i32> {
    CODES.iter().map(|e| e.0)
}

/// An error as the core reports it: a code of the number space plus the
/// detail a person needs ("bind 127.0.0.1:80: address already in use").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    code: i32,
    detail: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(code: i32, detail: impl Into<String>) -> Self {
        Error { code, detail: detail.into() }
    }

    /// An OS error, mapped as .NET maps errno on Unix, with context.
    pub fn os(err: &io::Error, context: &str) -> Self {
        let code = match err.raw_os_error() {
            Some(errno) => from_errno(errno),
            None => match err.kind() {
                io::ErrorKind::WouldBlock => ASOCK_WOULD_BLOCK,
                io::ErrorKind::InvalidInput => ASOCK_INVALID_ARGUMENT,
                _ => ASOCK_SOCKET_ERROR,
            },
        };
        Error::new(code, format!("{context}: {err}"))
    }

    pub fn code(&self) -> i32 {
        self.code
    }

    pub fn detail(&self) -> &str {
        &self.detail
    }

    pub fn null(what: &str) -> Self {
        Error::new(ASOCK_E_ARGUMENT_NULL, format!("{what} is NULL"))
    }
    pub fn argument(detail: impl Into<String>) -> Self {
        Error::new(ASOCK_E_ARGUMENT, detail)
    }
    pub fn out_of_range(detail: impl Into<String>) -> Self {
        Error::new(ASOCK_E_ARGUMENT_OUT_OF_RANGE, detail)
    }
    pub fn invalid_operation(detail: impl Into<String>) -> Self {
        Error::new(ASOCK_E_INVALID_OPERATION, detail)
    }
    pub fn disposed(detail: impl Into<String>) -> Self {
        Error::new(ASOCK_E_OBJECT_DISPOSED, detail)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", name(self.code).to_string_lossy(), self.detail)
    }
}

impl std::error::Error for Error {}

/// errno → SocketError, the table .NET uses on Unix (SocketErrorPal).
pub fn from_errno(errno: i32) -> i32 {
    use libc::*;
    match errno {
        0 => ASOCK_OK,
        EACCES | EPERM => ASOCK_ACCESS_DENIED,
        EADDRINUSE => ASOCK_ADDRESS_ALREADY_IN_USE,
        EADDRNOTAVAIL | ENOENT => ASOCK_ADDRESS_NOT_AVAILABLE,
        EAFNOSUPPORT => ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED,
        // EWOULDBLOCK is EAGAIN on every platform asock builds for.
        EAGAIN => ASOCK_WOULD_BLOCK,
        EALREADY => ASOCK_ALREADY_IN_PROGRESS,
        EBADF | ECANCELED => ASOCK_OPERATION_ABORTED,
        ECONNABORTED => ASOCK_CONNECTION_ABORTED,
        ECONNREFUSED => ASOCK_CONNECTION_REFUSED,
        ECONNRESET => ASOCK_CONNECTION_RESET,
        EDESTADDRREQ => ASOCK_DESTINATION_ADDRESS_REQUIRED,
        EFAULT => ASOCK_FAULT,
        EHOSTDOWN => ASOCK_HOST_DOWN,
        EHOSTUNREACH => ASOCK_HOST_UNREACHABLE,
        EINPROGRESS => ASOCK_IN_PROGRESS,
        EINTR => ASOCK_INTERRUPTED,
        EINVAL => ASOCK_INVALID_ARGUMENT,
        EISCONN => ASOCK_IS_CONNECTED,
        EMFILE | ENFILE => ASOCK_TOO_MANY_OPEN_SOCKETS,
        EMSGSIZE => ASOCK_MESSAGE_SIZE,
        ENETDOWN => ASOCK_NETWORK_DOWN,
        ENETRESET => ASOCK_NETWORK_RESET,
        ENETUNREACH => ASOCK_NETWORK_UNREACHABLE,
        ENOBUFS => ASOCK_NO_BUFFER_SPACE_AVAILABLE,
        ENODATA => ASOCK_NO_DATA,
        ENXIO => ASOCK_HOST_NOT_FOUND,
        ENOPROTOOPT => ASOCK_PROTOCOL_OPTION,
        ENOTCONN => ASOCK_NOT_CONNECTED,
        ENOTSOCK => ASOCK_NOT_SOCKET,
        // EOPNOTSUPP is ENOTSUP on Linux.
        ENOTSUP => ASOCK_OPERATION_NOT_SUPPORTED,
        EPIPE => ASOCK_SHUTDOWN,
        EPFNOSUPPORT => ASOCK_PROTOCOL_FAMILY_NOT_SUPPORTED,
        EPROTONOSUPPORT => ASOCK_PROTOCOL_NOT_SUPPORTED,
        EPROTOTYPE => ASOCK_PROTOCOL_TYPE,
        ESOCKTNOSUPPORT => ASOCK_SOCKET_NOT_SUPPORTED,
        ESHUTDOWN => ASOCK_DISCONNECTING,
        ETIMEDOUT => ASOCK_TIMED_OUT,
        _ => ASOCK_SOCKET_ERROR,
    }
}

// glibc's GNU extension, which the libc crate does not export.
const EAI_ADDRFAMILY: i32 = -9;

/// getaddrinfo's EAI_* → SocketError, as .NET maps them. `errno` is only
/// read for EAI_SYSTEM.
pub fn from_gai(eai: i32, errno: i32) -> i32 {
    use libc::*;
    match eai {
        0 => ASOCK_OK,
        EAI_AGAIN => ASOCK_TRY_AGAIN,
        EAI_BADFLAGS => ASOCK_INVALID_ARGUMENT,
        EAI_FAIL => ASOCK_NO_RECOVERY,
        EAI_FAMILY => ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED,
        EAI_MEMORY => ASOCK_NO_BUFFER_SPACE_AVAILABLE,
        EAI_NONAME | EAI_SERVICE => ASOCK_HOST_NOT_FOUND,
        EAI_NODATA | EAI_ADDRFAMILY => ASOCK_NO_DATA,
        EAI_SOCKTYPE => ASOCK_SOCKET_NOT_SUPPORTED,
        EAI_SYSTEM => from_errno(errno),
        _ => ASOCK_SOCKET_ERROR,
    }
}

thread_local! {
    static LAST_MESSAGE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Records the detail of this thread's last failed call.
pub fn set_last_message(text: &str) {
    LAST_MESSAGE.with(|m| {
        let mut m = m.borrow_mut();
        m.clear();
        m.push_str(text);
    });
}

/// Runs `f` on this thread's last message.
pub fn with_last_message<R>(f: impl FnOnce(&str) -> R) -> R {
    LAST_MESSAGE.with(|m| f(&m.borrow()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_table_entry_by_entry() {
        use libc::*;
        let table = [
            (0, ASOCK_OK),
            (EACCES, ASOCK_ACCESS_DENIED),
            (EPERM, ASOCK_ACCESS_DENIED),
            (EADDRINUSE, ASOCK_ADDRESS_ALREADY_IN_USE),
            (EADDRNOTAVAIL, ASOCK_ADDRESS_NOT_AVAILABLE),
            (ENOENT, ASOCK_ADDRESS_NOT_AVAILABLE),
            (EAFNOSUPPORT, ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED),
            (EAGAIN, ASOCK_WOULD_BLOCK),
            (EWOULDBLOCK, ASOCK_WOULD_BLOCK),
            (EALREADY, ASOCK_ALREADY_IN_PROGRESS),
            (EBADF, ASOCK_OPERATION_ABORTED),
            (ECANCELED, ASOCK_OPERATION_ABORTED),
            (ECONNABORTED, ASOCK_CONNECTION_ABORTED),
            (ECONNREFUSED, ASOCK_CONNECTION_REFUSED),
            (ECONNRESET, ASOCK_CONNECTION_RESET),
            (EDESTADDRREQ, ASOCK_DESTINATION_ADDRESS_REQUIRED),
            (EFAULT, ASOCK_FAULT),
            (EHOSTDOWN, ASOCK_HOST_DOWN),
            (EHOSTUNREACH, ASOCK_HOST_UNREACHABLE),
            (EINPROGRESS, ASOCK_IN_PROGRESS),
            (EINTR, ASOCK_INTERRUPTED),
            (EINVAL, ASOCK_INVALID_ARGUMENT),
            (EISCONN, ASOCK_IS_CONNECTED),
            (EMFILE, ASOCK_TOO_MANY_OPEN_SOCKETS),
            (ENFILE, ASOCK_TOO_MANY_OPEN_SOCKETS),
            (EMSGSIZE, ASOCK_MESSAGE_SIZE),
            (ENETDOWN, ASOCK_NETWORK_DOWN),
            (ENETRESET, ASOCK_NETWORK_RESET),
            (ENETUNREACH, ASOCK_NETWORK_UNREACHABLE),
            (ENOBUFS, ASOCK_NO_BUFFER_SPACE_AVAILABLE),
            (ENODATA, ASOCK_NO_DATA),
            (ENXIO, ASOCK_HOST_NOT_FOUND),
            (ENOMEM, ASOCK_SOCKET_ERROR),
            (ENOPROTOOPT, ASOCK_PROTOCOL_OPTION),
            (ENOTCONN, ASOCK_NOT_CONNECTED),
            (ENOTSOCK, ASOCK_NOT_SOCKET),
            (ENOTSUP, ASOCK_OPERATION_NOT_SUPPORTED),
            (EOPNOTSUPP, ASOCK_OPERATION_NOT_SUPPORTED),
            (EPIPE, ASOCK_SHUTDOWN),
            (EPFNOSUPPORT, ASOCK_PROTOCOL_FAMILY_NOT_SUPPORTED),
            (EPROTONOSUPPORT, ASOCK_PROTOCOL_NOT_SUPPORTED),
            (EPROTOTYPE, ASOCK_PROTOCOL_TYPE),
            (ESOCKTNOSUPPORT, ASOCK_SOCKET_NOT_SUPPORTED),
            (ESHUTDOWN, ASOCK_DISCONNECTING),
            (ETIMEDOUT, ASOCK_TIMED_OUT),
            (EIO, ASOCK_SOCKET_ERROR),
            (ENOSPC, ASOCK_SOCKET_ERROR),
            (99999, ASOCK_SOCKET_ERROR),
        ];
        for (errno, want) in table {
            assert_eq!(from_errno(errno), want, "errno {errno}");
        }
    }

    #[test]
    fn gai_table_entry_by_entry() {
        use libc::*;
        let table = [
            (0, ASOCK_OK),
            (EAI_AGAIN, ASOCK_TRY_AGAIN),
            (EAI_BADFLAGS, ASOCK_INVALID_ARGUMENT),
            (EAI_FAIL, ASOCK_NO_RECOVERY),
            (EAI_FAMILY, ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED),
            (EAI_MEMORY, ASOCK_NO_BUFFER_SPACE_AVAILABLE),
            (EAI_NONAME, ASOCK_HOST_NOT_FOUND),
            (EAI_SERVICE, ASOCK_HOST_NOT_FOUND),
            (EAI_NODATA, ASOCK_NO_DATA),
            (EAI_ADDRFAMILY, ASOCK_NO_DATA),
            (EAI_SOCKTYPE, ASOCK_SOCKET_NOT_SUPPORTED),
            (-12345, ASOCK_SOCKET_ERROR),
        ];
        for (eai, want) in table {
            assert_eq!(from_gai(eai, 0), want, "eai {eai}");
        }
        assert_eq!(from_gai(EAI_SYSTEM, ECONNREFUSED), ASOCK_CONNECTION_REFUSED);
    }

    #[test]
    fn every_code_has_a_unique_name() {
        let mut names: Vec<_> = CODES.iter().map(|e| e.1).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
        let mut codes: Vec<_> = all_codes().collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), n);
        assert_eq!(name(ASOCK_CONNECTION_RESET), c"ConnectionReset");
        assert_eq!(name(ASOCK_E_ARGUMENT_NULL), c"ArgumentNull");
        assert_eq!(name(12345), c"Unknown");
    }

    #[test]
    fn io_errors_map_through_errno() {
        let e = Error::os(&io::Error::from_raw_os_error(libc::ECONNRESET), "recv");
        assert_eq!(e.code(), ASOCK_CONNECTION_RESET);
        assert!(e.detail().starts_with("recv: "));
    }

    #[test]
    fn last_message_is_per_thread() {
        set_last_message("main");
        std::thread::spawn(|| {
            set_last_message("other");
            with_last_message(|m| assert_eq!(m, "other"));
        })
        .join()
        .unwrap();
        with_last_message(|m| assert_eq!(m, "main"));
    }
}
