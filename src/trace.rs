//! Network tracing (seed 000: "outputs trace information when you enable
//! network tracing").
//!
//! Off by default. The check on every traced path is one relaxed atomic load
//! of the level; the message is only formatted when that level is enabled, so
//! tracing off costs one load and a predictable branch.

use std::cell::Cell;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, RwLock};

/// Trace levels: a sink set at level N receives every record of level ≤ N.
pub(crate) const LEVEL_OFF: i32 = 0;
pub(crate) const LEVEL_ERROR: i32 = 1;
pub(crate) const LEVEL_INFO: i32 = 2;
pub(crate) const LEVEL_VERBOSE: i32 = 3;

/// Where records go. The core does not know the sink is a C callback.
pub type Sink = Arc<dyn Fn(i32, &str, &str) + Send + Sync>;

static LEVEL: AtomicI32 = AtomicI32::new(LEVEL_OFF);
static SINK: RwLock<Option<Sink>> = RwLock::new(None);

thread_local! {
    // A sink that calls back into asock must not trace itself into a loop.
    static IN_SINK: Cell<bool> = const { Cell::new(false) };
}

/// Installs `sink` at `level`, or turns tracing off with `None`. Returns
/// once no record is being delivered to the old sink any more, so its owner
/// may free what the sink uses. Refused from inside a sink (it would wait
/// for itself).
pub fn set(sink: Option<Sink>, level: i32) -> crate::error::Result<()> {
    if IN_SINK.with(|f| f.get()) {
        return Err(crate::error::Error::invalid_operation(
            "the trace callback cannot change tracing from inside itself",
        ));
    }
    // The write lock waits for every emit in flight (they hold read locks).
    let mut guard = SINK.write().unwrap_or_else(|p| p.into_inner());
    let level = if sink.is_some() { level } else { LEVEL_OFF };
    *guard = sink;
    LEVEL.store(level, Ordering::Release);
    Ok(())
}

#[inline(always)]
pub fn enabled(level: i32) -> bool {
    level <= LEVEL.load(Ordering::Relaxed)
}

/// Sends one record. Callers go through the `trace!` macro, which checks
/// `enabled` before building the text.
#[cold]
pub fn emit(level: i32, category: &str, text: &str) {
    if IN_SINK.with(|f| f.replace(true)) {
        return;
    }
    {
        // Held across the call, so `set` can wait for deliveries in flight.
        let sink = SINK.read().unwrap_or_else(|p| p.into_inner());
        if let Some(sink) = sink.as_ref() {
            if enabled(level) {
                sink(level, category, text);
            }
        }
    }
    IN_SINK.with(|f| f.set(false));
}

/// `trace!(LEVEL_INFO, "socket", "bind {} -> ok", ep)`
#[macro_export]
macro_rules! trace {
    ($level:expr, $category:expr, $($fmt:tt)+) => {
        if $crate::trace::enabled($level) {
            $crate::trace::emit($level, $category, &format!($($fmt)+));
        }
    };
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Tests that install a sink take this lock: the sink is process-global.
    pub static SINK_LOCK: Mutex<()> = Mutex::new(());

    #[test]
    fn levels_filter_and_off_is_off() {
        let _g = SINK_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        set(
            Some(Arc::new(move |l, c: &str, t: &str| s.lock().unwrap().push((l, c.to_string(), t.to_string())))),
            LEVEL_INFO,
        )
        .unwrap();
        trace!(LEVEL_ERROR, "t", "e{}", 1);
        trace!(LEVEL_INFO, "t", "i");
        trace!(LEVEL_VERBOSE, "t", "v");
        set(None, LEVEL_VERBOSE).unwrap();
        trace!(LEVEL_ERROR, "t", "after off");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0], (LEVEL_ERROR, "t".to_string(), "e1".to_string()));
        assert_eq!(seen[1].2, "i");
        assert!(!enabled(LEVEL_ERROR));
    }
}
