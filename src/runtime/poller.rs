//! The loop's view of the OS poller: the `polling` crate, kept behind this
//! small type so the readiness mode is decided in one place.
//!
//! Readiness is armed edge-triggered where the poller supports it (epoll and
//! kqueue): a socket is registered once, for read and write, for its whole
//! life, and never re-armed. Where edge mode is missing the fallback is
//! oneshot, re-armed after each event the loop dispatches.

use polling::{Event, Events, PollMode, Poller as Inner};
use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::time::Duration;

pub struct Poller {
    inner: Inner,
    mode: PollMode,
}

impl Poller {
    pub fn new() -> io::Result<Self> {
        let inner = Inner::new()?;
        let mode = if inner.supports_edge() { PollMode::Edge } else { PollMode::Oneshot };
        Ok(Poller { inner, mode })
    }

    pub fn needs_rearm(&self) -> bool {
        self.mode == PollMode::Oneshot
    }

    /// Registers `fd` for both directions under `key`.
    pub fn add(&self, fd: RawFd, key: usize) -> io::Result<()> {
        // SAFETY: the caller (the source registry) deletes the registration
        // before the descriptor is closed.
        unsafe { self.inner.add_with_mode(fd, Event::all(key), self.mode) }
    }

    pub fn rearm(&self, fd: RawFd, key: usize) -> io::Result<()> {
        // SAFETY: `fd` is registered and still open (see `add`).
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        self.inner.modify_with_mode(fd, Event::all(key), self.mode)
    }

    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        // SAFETY: called while `fd` is still open.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        self.inner.delete(fd)
    }

    pub fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<usize> {
        events.clear();
        self.inner.wait(events, timeout)
    }

    pub fn notify(&self) -> io::Result<()> {
        self.inner.notify()
    }
}
