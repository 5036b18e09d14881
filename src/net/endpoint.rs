//! Endpoints are `std::net::SocketAddr` in the core; the C struct is the
//! ffi layer's business. This module holds their text form.

use crate::error::{Error, Result, ASOCK_E_FORMAT};
use std::net::SocketAddr;

/// Parses "127.0.0.1:25", "[::1]:25" or "[fe80::1%2]:25". The port is
/// required: an endpoint without one is a host, not an endpoint.
pub fn parse(text: &str) -> Result<SocketAddr> {
    text.parse::<SocketAddr>().map_err(|_| {
        Error::new(
            ASOCK_E_FORMAT,
            format!("'{text}' is not an endpoint (expected a form like 127.0.0.1:25 or [::1]:25)"),
        )
    })
}

/// The canonical text form, which `parse` reads back.
pub fn format(addr: &SocketAddr) -> String {
    addr.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for text in ["127.0.0.1:25", "[::1]:25", "0.0.0.0:0", "[fe80::1%2]:65535", "255.255.255.255:1"] {
            assert_eq!(format(&parse(text).unwrap()), text);
        }
    }

    #[test]
    fn rejects_what_is_not_an_endpoint() {
        for text in [
            "",
            "127.0.0.1",
            "::1:25",
            "[::1]",
            "127.0.0.1:65536",
            "localhost:25",
            "1.2.3.4:-1",
            "[::1]:25x",
            " 1.2.3.4:5",
        ] {
            assert_eq!(parse(text).unwrap_err().code(), ASOCK_E_FORMAT, "{text}");
        }
    }
}
