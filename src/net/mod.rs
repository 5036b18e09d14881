//! Sockets and endpoints. Later: the Begin/End and event-args operations.

pub mod apm;
pub mod endpoint;
pub mod io;
pub mod resolve;
pub mod saea;
pub mod socket;

pub use socket::{AddressFamily, Protocol, ShutdownHow, Socket, SocketOption, SocketType};
