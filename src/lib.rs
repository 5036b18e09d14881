//! asock: the .NET / Winsock asynchronous networking model — Begin/End
//! operations, SocketAsyncEventArgs operations and an asynchronous SMTP
//! client — for C, C++ and any language with a C FFI.
//!
//! The crate is a Rust core that knows nothing of C (`error`, `handle`,
//! `runtime`, `net`, `trace`) under a thin C layer (`ffi`) of argument
//! checks, handle lookups and the panic guard. `docs/ARCHITECTURE.md` walks
//! through the design.

pub mod error;
pub mod ffi;
pub mod handle;
pub mod net;
pub mod runtime;
pub mod smtp;
pub mod trace;
