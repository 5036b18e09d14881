//! Section 8: network tracing.

use super::types::{asock_error, asock_trace_callback};
use super::{c_text, guard, UserPtr};
use crate::error::Error;
use crate::trace::{self, LEVEL_OFF, LEVEL_VERBOSE};
use std::ffi::c_void;
use std::sync::Arc;

pub const ASOCK_TRACE_OFF: i32 = 0;
/// Failures only.
pub const ASOCK_TRACE_ERROR: i32 = 1;
/// Socket and loop lifecycle, operation starts and completions, SMTP lines.
pub const ASOCK_TRACE_INFO: i32 = 2;
/// Everything, including per-event detail.
pub const ASOCK_TRACE_VERBOSE: i32 = 3;

/// Sends trace records of `level` and below (`ASOCK_TRACE_ERROR`..`_VERBOSE`;
/// else `ASOCK_E_ARGUMENT_OUT_OF_RANGE`) to `cb` with `userdata`. A NULL `cb`
/// or `ASOCK_TRACE_OFF` turns tracing off; off is the default and costs one
/// atomic load per traced point. `cb` runs on whichever thread did the work,
/// possibly on several at once; SMTP secrets are masked before it sees them.
/// Records emitted from inside `cb` itself are dropped. `cb` may run while
/// asock holds an object's internal lock, so it must not call asock
/// functions other than `asock_error_name` (hand the text to another
/// thread if something must be done about it). Returns once no call
/// to the previous callback is in progress, so its userdata may be freed
/// then; calling it from inside the trace callback →
/// `ASOCK_E_INVALID_OPERATION`.
#[no_mangle]
pub extern "C" fn asock_set_trace(cb: asock_trace_callback, level: i32, userdata: *mut c_void) -> asock_error {
    guard(|| {
        if !(LEVEL_OFF..=LEVEL_VERBOSE).contains(&level) {
            return Err(Error::out_of_range(format!("trace level {level} is not 0..3")));
        }
        let sink: Option<trace::Sink> = match cb {
            Some(cb) if level != LEVEL_OFF => {
                let userdata = UserPtr(userdata);
                Some(Arc::new(move |level: i32, category: &str, text: &str| {
                    let userdata = userdata;
                    let (c, t) = (c_text(category), c_text(text));
                    // SAFETY: the user's callback, with strings valid for the call.
                    unsafe { cb(level, c.as_ptr(), t.as_ptr(), userdata.0) }
                }))
            }
            _ => None,
        };
        trace::set(sink, level)
    })
}
