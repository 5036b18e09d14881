//! The sources of a loop: every socket that belongs to it, whether or not it
//! is registered with the poller yet.
//!
//! A poller key is `generation << 32 | slot`. Detaching a source bumps its
//! slot's generation, so an event already fetched for the old key — or one
//! the kernel still delivers for a descriptor number that has since been
//! closed and reused — finds a different generation and is dropped, never
//! delivered to the slot's next owner (libuv's tcp_close_accept lesson).

use std::os::fd::RawFd;
use std::sync::Weak;

/// What the loop needs from an object that owns a descriptor.
pub trait Source: Send + Sync {
    /// Readiness for the descriptor registered under this source's key;
    /// `hangup`: the peer shut down its side or the connection failed.
    fn on_ready(&self, readable: bool, writable: bool, hangup: bool);
    /// The loop is being freed: close, completing every pending operation.
    fn on_loop_closed(&self);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceKey(pub(crate) u64);

impl SourceKey {
    pub fn as_poller_key(self) -> usize {
        self.0 as usize
    }
}

struct Slot {
    generation: u32,
    source: Option<Weak<dyn Source>>,
    /// The descriptor registered with the poller, if any.
    fd: Option<RawFd>,
}

#[derive(Default)]
pub struct Sources {
    slots: Vec<Slot>,
    free: Vec<u32>,
}

impl Sources {
    pub fn insert(&mut self, source: Weak<dyn Source>) -> SourceKey {
        let index = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize].source = Some(source);
                i
            }
            None => {
                self.slots.push(Slot { generation: 1, source: Some(source), fd: None });
                (self.slots.len() - 1) as u32
            }
        };
        SourceKey(((self.slots[index as usize].generation as u64) << 32) | index as u64)
    }

    fn slot_mut(&mut self, key: SourceKey) -> Option<&mut Slot> {
        let index = (key.0 & 0xFFFF_FFFF) as usize;
        let generation = (key.0 >> 32) as u32;
        self.slots.get_mut(index).filter(|s| s.generation == generation && s.source.is_some())
    }

    pub fn get(&self, key: u64) -> Option<(Weak<dyn Source>, Option<RawFd>)> {
        let index = (key & 0xFFFF_FFFF) as usize;
        let generation = (key >> 32) as u32;
        let slot = self.slots.get(index)?;
        if slot.generation != generation {
            return None;
        }
        slot.source.clone().map(|s| (s, slot.fd))
    }

    pub fn set_fd(&mut self, key: SourceKey, fd: RawFd) -> bool {
        match self.slot_mut(key) {
            Some(slot) => {
                slot.fd = Some(fd);
                true
            }
            None => false,
        }
    }

    /// Forgets the registered descriptor but keeps the slot.
    pub fn take_fd(&mut self, key: SourceKey) -> Option<RawFd> {
        self.slot_mut(key).and_then(|s| s.fd.take())
    }

    /// Frees the slot; returns the descriptor that was registered, if any.
    pub fn remove(&mut self, key: SourceKey) -> Option<Option<RawFd>> {
        let index = (key.0 & 0xFFFF_FFFF) as u32;
        let slot = self.slot_mut(key)?;
        slot.source = None;
        // 31 bits of generation keep every key below polling's reserved
        // notification key (usize::MAX).
        slot.generation = if slot.generation >= 0x7FFF_FFFF { 1 } else { slot.generation + 1 };
        let fd = slot.fd.take();
        self.free.push(index);
        Some(fd)
    }

    /// Every live source, for closing them all when the loop is freed.
    pub fn live(&self) -> Vec<Weak<dyn Source>> {
        self.slots.iter().filter_map(|s| s.source.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}
