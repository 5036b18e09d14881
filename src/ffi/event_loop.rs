//! Section 3: loops, posting, timers.

use super::handles::{self, is_default, LOOPS};
use super::types::{asock_error, asock_loop, asock_post_callback, asock_timer_callback};
use super::{guard, out, UserPtr};
use crate::error::{Error, Result, ASOCK_OK, ASOCK_OPERATION_ABORTED};
use crate::runtime::{EventLoop, TimerId, TimerOutcome};
use std::ffi::c_void;
use std::sync::Arc;
use std::time::Duration;

/// Every id the C side sees is `u64`; `{0}` is the default loop.
fn own_loop(h: asock_loop, what: &str) -> Result<Arc<EventLoop>> {
    let l = handles::event_loop(h)?;
    if is_default(&l) {
        return Err(Error::invalid_operation(format!(
            "the default loop runs on its own library thread; {what} applies to loops made by asock_loop_new"
        )));
    }
    Ok(l)
}

/// Creates an event loop. It does not run until `asock_loop_run`,
/// `asock_loop_run_once` or `asock_loop_start_thread`. Free it with
/// `asock_loop_free`. `*out` is written only on success.
#[no_mangle]
pub extern "C" fn asock_loop_new(out: *mut asock_loop) -> asock_error {
    guard(|| {
        let out = super::out(out, "out")?;
        let l = EventLoop::new()?;
        *out = asock_loop { id: LOOPS.insert(l) };
        Ok(())
    })
}

/// Runs the loop on the calling thread until `asock_loop_stop` (from any
/// thread, or from a callback). Callbacks of the loop's sockets, posts and
/// timers run on this thread. `ASOCK_E_INVALID_OPERATION` if the loop is
/// already running (on a library thread or another caller), and for the
/// default loop, which always runs on its own thread.
#[no_mangle]
pub extern "C" fn asock_loop_run(l: asock_loop) -> asock_error {
    guard(|| own_loop(l, "run")?.run())
}

/// Runs one turn of the loop on the calling thread: waits up to `timeout_ms`
/// (0: do not wait; -1: until something happens) for events, then runs
/// every callback that is due. `*out_dispatched` (may be NULL) receives the
/// number of callbacks run. Same restrictions as `asock_loop_run`. The
/// calling thread is the loop's thread only during the call: between turns,
/// a blocking End on one of the loop's operations from that thread waits
/// for a turn nobody will run — drive the loop, or use a bounded wait.
#[no_mangle]
pub extern "C" fn asock_loop_run_once(l: asock_loop, timeout_ms: i32, out_dispatched: *mut u32) -> asock_error {
    guard(|| {
        let timeout = match timeout_ms {
            -1 => None,
            t if t >= 0 => Some(Duration::from_millis(t as u64)),
            t => return Err(Error::out_of_range(format!("timeout {t} ms is not -1 or >= 0"))),
        };
        let n = own_loop(l, "run_once")?.run_once(timeout)?;
        if !out_dispatched.is_null() {
            *out(out_dispatched, "out_dispatched")? = n;
        }
        Ok(())
    })
}

/// Runs the loop on a thread the library owns, until `asock_loop_stop` or
/// `asock_loop_free`. After a stop it may be started again: called while a
/// stopped loop is still finishing its turn, it waits for that turn to end
/// (as do run and run_once).
#[no_mangle]
pub extern "C" fn asock_loop_start_thread(l: asock_loop) -> asock_error {
    guard(|| own_loop(l, "start_thread")?.start_thread())
}

/// Asks the loop to return from `asock_loop_run` (or end its library
/// thread) after the current turn. Any thread. If nobody runs the loop, the
/// next run returns after one turn, as libuv's uv_stop.
#[no_mangle]
pub extern "C" fn asock_loop_stop(l: asock_loop) -> asock_error {
    guard(|| {
        own_loop(l, "stop")?.stop();
        Ok(())
    })
}

/// Queues `fn(state)` to run once on the loop's thread, after this call
/// returns, in posting order. Any thread, including the loop's own. `state`
/// is passed through untouched. After `asock_loop_free` has drained the
/// loop, posting returns `ASOCK_E_OBJECT_DISPOSED` and runs nothing.
#[no_mangle]
pub extern "C" fn asock_loop_post(l: asock_loop, f: asock_post_callback, state: *mut c_void) -> asock_error {
    guard(|| {
        let f = f.ok_or_else(|| Error::null("fn"))?;
        let state = UserPtr(state);
        handles::event_loop(l)?.post(Box::new(move || {
            let state = state;
            // SAFETY: a C function pointer the user registered, called with
            // the state the user gave, on the loop thread as documented.
            unsafe { f(state.0) }
        }))
    })
}

/// Starts a one-shot timer: `cb(state, ASOCK_OK)` runs on the loop's thread
/// once `delay_ms` has passed, or `cb(state, ASOCK_OPERATION_ABORTED)` after
/// `asock_loop_cancel_timer` or when the loop is freed — exactly once either
/// way, never inside this call. `*out_timer` (may be NULL) receives an id
/// for cancelling.
#[no_mangle]
pub extern "C" fn asock_loop_add_timer(
    l: asock_loop,
    delay_ms: u32,
    cb: asock_timer_callback,
    state: *mut c_void,
    out_timer: *mut u64,
) -> asock_error {
    guard(|| {
        let cb = cb.ok_or_else(|| Error::null("cb"))?;
        let state = UserPtr(state);
        let id = handles::event_loop(l)?.add_timer(
            Duration::from_millis(delay_ms as u64),
            Box::new(move |outcome| {
                let state = state;
                let status = if outcome == TimerOutcome::Fired { ASOCK_OK } else { ASOCK_OPERATION_ABORTED };
                // SAFETY: as in asock_loop_post.
                unsafe { cb(state.0, status) }
            }),
        )?;
        if !out_timer.is_null() {
            *out(out_timer, "out_timer")? = id.0;
        }
        Ok(())
    })
}

/// Cancels a timer before it fires; its callback then runs with
/// `ASOCK_OPERATION_ABORTED` on the loop thread. `ASOCK_E_INVALID_OPERATION`
/// if it already fired or was cancelled, or is not this loop's (timer ids
/// are unique in the process); `ASOCK_E_ARGUMENT_NULL` for id 0.
#[no_mangle]
pub extern "C" fn asock_loop_cancel_timer(l: asock_loop, timer: u64) -> asock_error {
    guard(|| {
        if timer == 0 {
            return Err(Error::null("timer"));
        }
        if handles::event_loop(l)?.cancel_timer(TimerId(timer)) {
            Ok(())
        } else {
            Err(Error::invalid_operation(format!("timer {timer} has already fired or been cancelled")))
        }
    })
}

/// Frees a loop: stops it, waits until whoever runs it has returned, closes
/// every socket still on it (each pending operation completes exactly once),
/// then runs what is left — posted functions, and unfired timers with
/// `ASOCK_OPERATION_ABORTED` — on the calling thread. The handle is invalid
/// afterwards (`ASOCK_E_OBJECT_DISPOSED`). Freeing `{0}` (the default loop)
/// does nothing. From the loop's own thread: `ASOCK_E_INVALID_OPERATION`.
#[no_mangle]
pub extern "C" fn asock_loop_free(l: asock_loop) -> asock_error {
    guard(|| {
        if l.id == 0 {
            return Ok(());
        }
        let lp = LOOPS.get(l.id)?;
        lp.close()?;
        LOOPS.remove(l.id)?;
        Ok(())
    })
}
