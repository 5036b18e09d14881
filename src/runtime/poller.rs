//! The loop's view of the OS poller, so the readiness mode and the system
//! calls per wait are decided in one place.
//!
//! On Linux asock drives epoll itself: one `epoll_wait` per turn, with the
//! timeout passed to it directly, and an eventfd for wake-ups that is read
//! only when a wake-up actually happened. The `polling` crate — the backend
//! everywhere else — costs four more system calls per wait on Linux (it
//! reads and re-arms its eventfd and programs and re-arms a timerfd on every
//! call), which made a single-connection echo cost 7–8 system calls per
//! round trip instead of 3 (docs/PERFORMANCE.md).
//!
//! Readiness is armed edge-triggered: a socket is registered once, for read
//! and write, for its whole life, and never re-armed. Where `polling` lacks
//! edge mode the fallback is oneshot, re-armed after each event.

/// One readiness report.
#[derive(Clone, Copy, Debug)]
pub struct Ready {
    pub key: usize,
    pub readable: bool,
    pub writable: bool,
    /// The peer shut down its side, or the connection failed: whatever is
    /// left to read includes the end. (Always true where the backend
    /// cannot tell, which turns the short-read rule off there.)
    pub hangup: bool,
}

#[cfg(target_os = "linux")]
mod imp {
    use super::Ready;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::time::Duration;

    /// The key of the wake-up eventfd; sources' keys never reach it (their
    /// generations stay below 2^31).
    const WAKE: u64 = u64::MAX;

    pub struct Events {
        list: Vec<libc::epoll_event>,
        len: usize,
    }

    impl Events {
        pub fn new() -> Self {
            Events { list: vec![libc::epoll_event { events: 0, u64: 0 }; 1024], len: 0 }
        }

        pub fn iter(&self) -> impl Iterator<Item = Ready> + '_ {
            self.list[..self.len].iter().filter(|e| e.u64 != WAKE).map(|e| {
                let ev = e.events as i32;
                let failed = ev & (libc::EPOLLHUP | libc::EPOLLERR) != 0;
                Ready {
                    key: e.u64 as usize,
                    readable: failed || ev & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLPRI) != 0,
                    writable: failed || ev & libc::EPOLLOUT != 0,
                    hangup: failed || ev & libc::EPOLLRDHUP != 0,
                }
            })
        }
    }

    pub struct Poller {
        epoll: OwnedFd,
        wake: OwnedFd,
    }

    fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }

    impl Poller {
        pub fn new() -> io::Result<Self> {
            // SAFETY: plain system calls; the descriptors are owned at once.
            let epoll = unsafe { OwnedFd::from_raw_fd(check(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
            let wake =
                unsafe { OwnedFd::from_raw_fd(check(libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK))?) };
            let p = Poller { epoll, wake };
            p.ctl(libc::EPOLL_CTL_ADD, p.wake.as_raw_fd(), libc::EPOLLIN as u32, WAKE)?;
            Ok(p)
        }

        fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, key: u64) -> io::Result<()> {
            let mut ev = libc::epoll_event { events, u64: key };
            // SAFETY: valid epoll descriptor and event struct.
            check(unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut ev) }).map(|_| ())
        }

        pub fn needs_rearm(&self) -> bool {
            false
        }

        pub fn add(&self, fd: RawFd, key: usize) -> io::Result<()> {
            let events = libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET;
            self.ctl(libc::EPOLL_CTL_ADD, fd, events as u32, key as u64)
        }

        pub fn rearm(&self, _fd: RawFd, _key: usize) -> io::Result<()> {
            Ok(())
        }

        pub fn delete(&self, fd: RawFd) -> io::Result<()> {
            self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
        }

        pub fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
            // Round up, so a timer is never woken for early.
            let ms = match timeout {
                None => -1,
                Some(t) => t.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32,
            };
            let cap = events.list.len() as libc::c_int;
            // SAFETY: the buffer holds `cap` events.
            let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.list.as_mut_ptr(), cap, ms) };
            if n < 0 {
                events.len = 0;
                let e = io::Error::last_os_error();
                return if e.kind() == io::ErrorKind::Interrupted { Ok(()) } else { Err(e) };
            }
            events.len = n as usize;
            if events.list[..events.len].iter().any(|e| e.u64 == WAKE) {
                // Only a real wake-up costs this read (level-triggered, so
                // an unread counter would wake every wait).
                let mut buf = [0u8; 8];
                // SAFETY: reading 8 bytes into our buffer.
                unsafe { libc::read(self.wake.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, 8) };
            }
            Ok(())
        }

        pub fn notify(&self) -> io::Result<()> {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writing 8 bytes from our buffer.
            let rc = unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr() as *const libc::c_void, 8) };
            // EAGAIN: the counter is saturated, so a wake-up is pending anyway.
            if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::Ready;
    use polling::{Event, PollMode, Poller as Inner};
    use std::io;
    use std::os::fd::{BorrowedFd, RawFd};
    use std::time::Duration;

    pub struct Events(polling::Events);

    impl Events {
        pub fn new() -> Self {
            Events(polling::Events::with_capacity(std::num::NonZeroUsize::new(1024).unwrap()))
        }

        pub fn iter(&self) -> impl Iterator<Item = Ready> + '_ {
            self.0.iter().map(|e| Ready { key: e.key, readable: e.readable, writable: e.writable, hangup: true })
        }
    }

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

        pub fn add(&self, fd: RawFd, key: usize) -> io::Result<()> {
            // SAFETY: the source registry deletes the registration before
            // the descriptor is closed.
            unsafe { self.inner.add_with_mode(fd, Event::all(key), self.mode) }
        }

        pub fn rearm(&self, fd: RawFd, key: usize) -> io::Result<()> {
            // SAFETY: `fd` is registered and still open.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            self.inner.modify_with_mode(fd, Event::all(key), self.mode)
        }

        pub fn delete(&self, fd: RawFd) -> io::Result<()> {
            // SAFETY: called while `fd` is still open.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            self.inner.delete(fd)
        }

        pub fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
            events.0.clear();
            self.inner.wait(&mut events.0, timeout).map(|_| ())
        }

        pub fn notify(&self) -> io::Result<()> {
            self.inner.notify()
        }
    }
}

pub use imp::{Events, Poller};
