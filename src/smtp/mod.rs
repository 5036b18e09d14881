//! The SMTP client (seed 002): the reply parser, EHLO capabilities, the
//! DATA encoder, the message model, authentication, TLS, the transport,
//! pickup-directory delivery and the client's session state machine.

pub mod auth;
pub mod caps;
pub mod client;
pub mod data;
pub mod message;
pub mod pickup;
pub mod reply;
pub mod tls;
pub(crate) mod transport;
