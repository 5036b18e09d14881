//! The process-wide handle tables and the lookups every call starts with.

use crate::error::{Error, Result};
use crate::handle::{HandleTable, Kind};
use crate::net::Socket;
use crate::runtime::EventLoop;
use once_cell::sync::OnceCell;
use std::sync::Arc;

use super::types::{asock_loop, asock_socket};

pub(crate) static LOOPS: HandleTable<EventLoop> = HandleTable::new(Kind::Loop);
pub(crate) static SOCKETS: HandleTable<Socket> = HandleTable::new(Kind::Socket);

static DEFAULT_LOOP: OnceCell<Arc<EventLoop>> = OnceCell::new();

/// The default loop, created and started on its own thread on first use.
pub(crate) fn default_loop() -> Result<&'static Arc<EventLoop>> {
    DEFAULT_LOOP.get_or_try_init(|| {
        let l = EventLoop::new()?;
        l.start_thread()?;
        Ok::<_, Error>(l)
    })
}

pub(crate) fn is_default(l: &Arc<EventLoop>) -> bool {
    DEFAULT_LOOP.get().is_some_and(|d| Arc::ptr_eq(d, l))
}

/// `{0}` is the default loop; any other id must be a live loop.
pub(crate) fn event_loop(h: asock_loop) -> Result<Arc<EventLoop>> {
    if h.id == 0 {
        return default_loop().cloned();
    }
    LOOPS.get(h.id)
}

pub(crate) fn socket(h: asock_socket) -> Result<Arc<Socket>> {
    SOCKETS.get(h.id)
}
