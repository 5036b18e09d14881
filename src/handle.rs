//! Generation-checked handle table.
//!
//! A handle id is a `u64`: bits 56..64 name the kind of object (so a socket
//! id passed where a loop is expected is caught), bits 32..56 hold the slot's
//! generation, bits 0..32 the slot index. Freeing a slot bumps its generation,
//! so a stale id never reaches the slot's next tenant. Freed slots are reused
//! first-in first-out, which keeps a freed id stale for as long as possible
//! before its index comes round again. Id 0 is never issued: it is "none".

use crate::error::{Error, Result};
use std::collections::VecDeque;
use std::sync::{Arc, RwLock};

const INDEX_BITS: u32 = 32;
const GEN_BITS: u32 = 24;
const GEN_MASK: u64 = (1 << GEN_BITS) - 1;

/// The kind tag of each handle type. Non-zero, so no valid id is 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Loop = 0x4C,        // 'L'
    Socket = 0x53,      // 'S'
    AsyncResult = 0x52, // 'R'
    EventArgs = 0x45,   // 'E'
    SmtpClient = 0x43,  // 'C'
    MailMessage = 0x4D, // 'M'
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Loop => "loop",
            Kind::Socket => "socket",
            Kind::AsyncResult => "async result",
            Kind::EventArgs => "event args",
            Kind::SmtpClient => "SMTP client",
            Kind::MailMessage => "mail message",
        }
    }
}

struct Slot<T> {
    generation: u32,
    value: Option<Arc<T>>,
}

struct Inner<T> {
    slots: Vec<Slot<T>>,
    free: VecDeque<u32>,
}

pub struct HandleTable<T> {
    kind: Kind,
    inner: RwLock<Inner<T>>,
}

fn compose(kind: Kind, generation: u32, index: u32) -> u64 {
    ((kind as u64) << (INDEX_BITS + GEN_BITS)) | ((generation as u64 & GEN_MASK) << INDEX_BITS) | index as u64
}

impl<T> HandleTable<T> {
    pub const fn new(kind: Kind) -> Self {
        HandleTable { kind, inner: RwLock::new(Inner { slots: Vec::new(), free: VecDeque::new() }) }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Stores `value` and returns its new id.
    pub fn insert(&self, value: Arc<T>) -> u64 {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if let Some(index) = inner.free.pop_front() {
            let slot = &mut inner.slots[index as usize];
            slot.value = Some(value);
            compose(self.kind, slot.generation, index)
        } else {
            let index = inner.slots.len() as u32;
            inner.slots.push(Slot { generation: 1, value: Some(value) });
            compose(self.kind, 1, index)
        }
    }

    /// Splits and checks an id; returns the slot index and generation.
    fn decode(&self, id: u64) -> Result<(usize, u32)> {
        let noun = self.kind.noun();
        if id == 0 {
            return Err(Error::null(&format!("the {noun} handle")));
        }
        if (id >> (INDEX_BITS + GEN_BITS)) as u8 != self.kind as u8 {
            return Err(Error::argument(format!("{id:#x} is not a {noun} handle")));
        }
        let generation = ((id >> INDEX_BITS) & GEN_MASK) as u32;
        let index = (id & 0xFFFF_FFFF) as usize;
        Ok((index, generation))
    }

    fn stale_or_forged(&self, id: u64, slot: Option<&Slot<T>>, generation: u32) -> Error {
        let noun = self.kind.noun();
        match slot {
            // A generation this slot has already had: the object was freed.
            Some(s) if generation != 0 && generation <= s.generation => {
                Error::disposed(format!("the {noun} {id:#x} has been closed or freed"))
            }
            _ => Error::argument(format!("{id:#x} is not a valid {noun} handle")),
        }
    }

    /// The object behind `id`, or the reason there is none.
    pub fn get(&self, id: u64) -> Result<Arc<T>> {
        let (index, generation) = self.decode(id)?;
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let slot = inner.slots.get(index);
        match slot {
            Some(Slot { generation: g, value: Some(v) }) if *g == generation => Ok(v.clone()),
            _ => Err(self.stale_or_forged(id, slot, generation)),
        }
    }

    /// Removes the object behind `id`; the id is stale from now on.
    pub fn remove(&self, id: u64) -> Result<Arc<T>> {
        let (index, generation) = self.decode(id)?;
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let live = matches!(inner.slots.get(index), Some(Slot { generation: g, value: Some(_) }) if *g == generation);
        if !live {
            return Err(self.stale_or_forged(id, inner.slots.get(index), generation));
        }
        let slot = &mut inner.slots[index];
        let value = slot.value.take().expect("checked live above");
        slot.generation = if slot.generation as u64 >= GEN_MASK { 1 } else { slot.generation + 1 };
        inner.free.push_back(index as u32);
        Ok(value)
    }

    /// Number of live objects.
    pub fn len(&self) -> usize {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner.slots.len() - inner.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::*;

    #[test]
    fn lifecycle_and_stale_ids() {
        let t: HandleTable<u32> = HandleTable::new(Kind::Socket);
        let a = t.insert(Arc::new(1));
        assert_ne!(a, 0);
        assert_eq!(*t.get(a).unwrap(), 1);
        assert_eq!(*t.remove(a).unwrap(), 1);
        assert_eq!(t.get(a).unwrap_err().code(), ASOCK_E_OBJECT_DISPOSED);
        assert_eq!(t.remove(a).unwrap_err().code(), ASOCK_E_OBJECT_DISPOSED);
        // The slot is reused with a new generation; the old id stays dead.
        let b = t.insert(Arc::new(2));
        assert_eq!(a & 0xFFFF_FFFF, b & 0xFFFF_FFFF);
        assert_ne!(a, b);
        assert_eq!(t.get(a).unwrap_err().code(), ASOCK_E_OBJECT_DISPOSED);
        assert_eq!(*t.get(b).unwrap(), 2);
    }

    #[test]
    fn none_forged_and_wrong_kind() {
        let t: HandleTable<u32> = HandleTable::new(Kind::Socket);
        let other: HandleTable<u32> = HandleTable::new(Kind::Loop);
        let a = t.insert(Arc::new(1));
        let l = other.insert(Arc::new(1));
        assert_eq!(t.get(0).unwrap_err().code(), ASOCK_E_ARGUMENT_NULL);
        assert_eq!(t.get(l).unwrap_err().code(), ASOCK_E_ARGUMENT);
        assert_eq!(t.get(a + 1000).unwrap_err().code(), ASOCK_E_ARGUMENT);
        assert_eq!(t.get(a + (5 << 32)).unwrap_err().code(), ASOCK_E_ARGUMENT);
        assert_eq!(t.get(u64::MAX).unwrap_err().code(), ASOCK_E_ARGUMENT);
        assert_eq!(*t.get(a).unwrap(), 1);
    }

    #[test]
    fn generation_wraps_without_reissuing_zero() {
        let t: HandleTable<u32> = HandleTable::new(Kind::Socket);
        let first = t.insert(Arc::new(0));
        {
            let mut inner = t.inner.write().unwrap();
            inner.slots[0].generation = GEN_MASK as u32;
        }
        let top = compose(Kind::Socket, GEN_MASK as u32, 0);
        t.remove(top).unwrap();
        let again = t.insert(Arc::new(0));
        assert_eq!((again >> 32) & GEN_MASK, 1);
        assert_eq!(again, first);
    }
}
