//! The SMTP client (seed 002). Built up in working steps: the reply
//! parser, the EHLO capabilities and the DATA encoder are here; the client
//! state machine, TLS, authentication and message building follow.

pub mod caps;
pub mod data;
pub mod reply;
