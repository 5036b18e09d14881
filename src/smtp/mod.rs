//! The SMTP client (seed 002). Built up in working steps: the reply
//! parser, the EHLO capabilities, the DATA encoder and the message model
//! are here; the client state machine, TLS, authentication, pickup delivery
//! and the C functions of section 7 follow.

pub mod caps;
pub mod data;
pub mod message;
pub mod reply;
