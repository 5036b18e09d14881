//! The event loop: one poller, a queue of posted tasks, timers, and the
//! sources (sockets) that belong to the loop. See `docs/ARCHITECTURE.md`.

mod event_loop;
mod poller;
mod sources;
mod thread_token;
mod timers;

pub use event_loop::{Deliver, EventLoop, Task};
pub use sources::{Source, SourceKey};
pub use thread_token::current as current_thread_token;
pub use timers::{TimerCallback, TimerId, TimerOutcome};
