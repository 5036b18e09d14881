//! The C ABI: argument checks, handle lookups and the panic guard, nothing
//! else. Each submodule mirrors one section of `docs/API.md`.
//!
//! Every exported body runs inside `guard`, which turns a core `Error` into
//! its code (recording the detail for `asock_error_message`) and a panic
//! into `ASOCK_E_INTERNAL`: no panic ever crosses into C.

#![allow(non_camel_case_types)]

pub mod apm;
pub mod endpoint;
pub mod error;
pub mod event_loop;
mod handles;
pub mod mail;
pub mod saea;
pub mod smtp;
pub mod socket;
pub mod trace;
pub mod types;

use crate::error::{set_last_message, Error, Result, ASOCK_E_INTERNAL, ASOCK_OK};
use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use types::asock_error;

fn panic_text(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs an exported body that returns a code.
pub(crate) fn guard(f: impl FnOnce() -> Result<()>) -> asock_error {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => ASOCK_OK,
        Ok(Err(e)) => fail(&e),
        Err(panic) => {
            set_last_message(&format!("internal error (a bug in asock): {}", panic_text(panic)));
            ASOCK_E_INTERNAL
        }
    }
}

/// Runs an exported body that returns a plain value, with `fallback` on a
/// panic.
pub(crate) fn guard_value<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(panic) => {
            set_last_message(&format!("internal error (a bug in asock): {}", panic_text(panic)));
            fallback
        }
    }
}

/// Records `e` as this thread's last failure and returns its code.
pub(crate) fn fail(e: &Error) -> asock_error {
    set_last_message(e.detail());
    e.code()
}

/// Writes `value` through an out pointer the caller vouched for.
pub(crate) fn out<T>(ptr: *mut T, what: &str) -> Result<&'static mut T> {
    // SAFETY: C callers pass either NULL (rejected here) or a pointer to a
    // writable T that stays valid for the duration of the call.
    unsafe { ptr.as_mut() }.ok_or_else(|| Error::null(what))
}

/// Reads an in pointer the caller vouched for.
pub(crate) fn input<'a, T>(ptr: *const T, what: &str) -> Result<&'a T> {
    // SAFETY: as `out`, for reading.
    unsafe { ptr.as_ref() }.ok_or_else(|| Error::null(what))
}

/// Borrows an array the caller vouched for (`n` readable elements).
pub(crate) fn slice<'a, T>(ptr: *const T, n: usize) -> &'a [T] {
    if n == 0 {
        return &[];
    }
    // SAFETY: C callers pass `n` readable elements at a non-NULL `ptr`
    // (checked by the caller) that stay valid for the duration of the call.
    unsafe { std::slice::from_raw_parts(ptr, n) }
}

/// Borrows a NUL-terminated UTF-8 string.
pub(crate) fn c_str<'a>(ptr: *const c_char, what: &str) -> Result<&'a str> {
    if ptr.is_null() {
        return Err(Error::null(what));
    }
    // SAFETY: non-NULL C strings handed to asock are NUL-terminated and live
    // for the duration of the call.
    unsafe { CStr::from_ptr(ptr) }.to_str().map_err(|_| Error::argument(format!("{what} is not valid UTF-8")))
}

/// Copies `text` into a caller buffer snprintf-style: at most `len - 1`
/// bytes and a NUL, returns the full length so the caller can size a retry.
pub(crate) fn copy_out(text: &str, buf: *mut c_char, len: usize) -> usize {
    if !buf.is_null() && len > 0 {
        let n = text.len().min(len - 1);
        // SAFETY: the caller gave `len` writable bytes at `buf`; n + 1 <= len.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), buf as *mut u8, n);
            *buf.add(n) = 0;
        }
    }
    text.len()
}

/// `s` as a C string for a callback; an interior NUL (which C would take
/// for the end) is shown as `\0`.
pub(crate) fn c_text(s: &str) -> std::ffi::CString {
    std::ffi::CString::new(s.replace('\0', "\\0")).expect("NULs were replaced")
}

/// Copies `bytes` to a caller buffer already checked to hold them.
pub(crate) fn write_bytes(dst: *mut u8, bytes: &[u8]) {
    // SAFETY: callers check `dst` is non-NULL with room for `bytes.len()`.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) }
}

/// A user pointer handed back to a callback on another thread. asock never
/// dereferences it; the user promised it may cross threads.
#[derive(Clone, Copy)]
pub(crate) struct UserPtr(pub *mut std::ffi::c_void);
// SAFETY: see above — the pointer is only carried, never used, by asock.
unsafe impl Send for UserPtr {}
unsafe impl Sync for UserPtr {}

#[cfg(test)]
mod header_tests {
    /// The public header defines nothing outside asock's namespace: every
    /// macro is `ASOCK_*`, every type `asock_*` (a stray `pub const` in the
    /// core would otherwise become a bare `#define` in every C program).
    #[test]
    fn header_names_are_prefixed() {
        let header = include_str!("../../include/asock.h");
        for line in header.lines() {
            if let Some(rest) = line.strip_prefix("#define ") {
                let name = rest.split_whitespace().next().unwrap_or("");
                assert!(name.starts_with("ASOCK_"), "unprefixed macro: {line}");
            }
            for kw in ["typedef struct ", "typedef "] {
                if let Some(rest) = line.strip_prefix(kw) {
                    let name = rest.split(|c: char| !c.is_alphanumeric() && c != '_').find(|w| w.starts_with("asock_"));
                    assert!(name.is_some(), "type outside the asock_ namespace: {line}");
                    break;
                }
            }
        }
    }
}
