//! Section 2: errors, names, this thread's last message, the version.

use super::types::asock_error;
use super::{copy_out, guard_value};
use crate::error;
use std::ffi::c_char;

/// The .NET name of an error code ("ConnectionReset", "ArgumentNull",
/// "Success" for `ASOCK_OK`, "Unknown" for a number outside the space).
/// Never NULL; the string is static. Any thread.
#[no_mangle]
pub extern "C" fn asock_error_name(e: asock_error) -> *const c_char {
    guard_value(c"Internal".as_ptr(), || error::name(e).as_ptr())
}

/// Copies the detail of this thread's last failed asock call into `buf`
/// (at most `len - 1` bytes and a NUL; nothing is written when `buf` is NULL
/// or `len` is 0) and returns the detail's full length in bytes, without the
/// NUL. A successful call does not clear it. Thread-local: a call on another
/// thread never changes what this thread reads.
#[no_mangle]
pub extern "C" fn asock_error_message(buf: *mut c_char, len: usize) -> usize {
    guard_value(0, || error::with_last_message(|m| copy_out(m, buf, len)))
}

/// The library version, "MAJOR.MINOR.PATCH". Static; never NULL.
#[no_mangle]
pub extern "C" fn asock_version() -> *const c_char {
    guard_value(c"?".as_ptr(), || concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char)
}

/// Maps an `errno` value to the error space the way .NET does on Unix
/// (EAGAIN → `ASOCK_WOULD_BLOCK`, EPIPE → `ASOCK_SHUTDOWN`, unknown →
/// `ASOCK_SOCKET_ERROR`), for programs that mix their own system calls with
/// asock's. Any thread.
#[no_mangle]
pub extern "C" fn asock_error_from_errno(errnum: i32) -> asock_error {
    guard_value(error::ASOCK_SOCKET_ERROR, || error::from_errno(errnum))
}
