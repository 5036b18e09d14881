//! Section 4: endpoints and their text form.

use super::types::{asock_endpoint, asock_error};
use super::{c_str, copy_out, fail, guard, guard_value, input, out};
use crate::error::{Error, Result, ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED};
use crate::net::endpoint;
use std::ffi::c_char;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// .NET AddressFamily.InterNetwork.
pub const ASOCK_AF_INET: i32 = 2;
/// .NET AddressFamily.InterNetworkV6.
pub const ASOCK_AF_INET6: i32 = 23;
/// Room for the longest endpoint text, "[ffff:…%4294967295]:65535", and its NUL.
pub const ASOCK_ENDPOINT_TEXT_MAX: usize = 64;

pub(crate) fn from_c(ep: &asock_endpoint) -> Result<SocketAddr> {
    match ep.family {
        ASOCK_AF_INET => {
            let ip = Ipv4Addr::new(ep.addr[0], ep.addr[1], ep.addr[2], ep.addr[3]);
            Ok(SocketAddr::V4(SocketAddrV4::new(ip, ep.port)))
        }
        ASOCK_AF_INET6 => {
            Ok(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ep.addr), ep.port, ep.flowinfo, ep.scope_id)))
        }
        f => Err(Error::new(
            ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED,
            format!("endpoint family {f} is not ASOCK_AF_INET (2) or ASOCK_AF_INET6 (23)"),
        )),
    }
}

pub(crate) fn to_c(addr: &SocketAddr) -> asock_endpoint {
    let mut ep = asock_endpoint { port: addr.port(), ..Default::default() };
    match addr {
        SocketAddr::V4(a) => {
            ep.family = ASOCK_AF_INET;
            ep.addr[..4].copy_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            ep.family = ASOCK_AF_INET6;
            ep.addr = a.ip().octets();
            ep.flowinfo = a.flowinfo();
            ep.scope_id = a.scope_id();
        }
    }
    ep
}

/// Reads an endpoint argument: NULL → `ASOCK_E_ARGUMENT_NULL`.
pub(crate) fn arg(ep: *const asock_endpoint, what: &str) -> Result<SocketAddr> {
    from_c(input(ep, what)?)
}

/// Parses "127.0.0.1:25", "[::1]:25" or "[fe80::1%2]:25" (IPv6 in brackets,
/// port required, no host names). Bad text → `ASOCK_E_FORMAT`. `*out` is
/// written only on success. Any thread.
#[no_mangle]
pub extern "C" fn asock_endpoint_parse(text: *const c_char, out_ep: *mut asock_endpoint) -> asock_error {
    guard(|| {
        let out_ep = out(out_ep, "out")?;
        let text = c_str(text, "text")?;
        *out_ep = to_c(&endpoint::parse(text)?);
        Ok(())
    })
}

/// Writes the endpoint's text form (which `asock_endpoint_parse` reads back)
/// into `buf`, snprintf-style: at most `len - 1` bytes and a NUL. Returns
/// the full length without the NUL (at most `ASOCK_ENDPOINT_TEXT_MAX - 1`),
/// or 0 when `ep` is NULL or its family is invalid (see
/// `asock_error_message`). Any thread.
#[no_mangle]
pub extern "C" fn asock_endpoint_format(ep: *const asock_endpoint, buf: *mut c_char, len: usize) -> usize {
    guard_value(0, || match arg(ep, "ep") {
        Ok(addr) => copy_out(&endpoint::format(&addr), buf, len),
        Err(e) => {
            fail(&e);
            0
        }
    })
}

/// Fills `*out` with the loopback (`ASOCK_AF_INET`: 127.0.0.1, `ASOCK_AF_INET6`:
/// ::1) or any (0.0.0.0, ::) address of a family, with `port` — the
/// endpoints tests and servers start from. Bad family →
/// `ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED`.
#[no_mangle]
pub extern "C" fn asock_endpoint_init(
    family: i32,
    loopback: bool,
    port: u16,
    out_ep: *mut asock_endpoint,
) -> asock_error {
    guard(|| {
        let out_ep = out(out_ep, "out")?;
        let ip: IpAddr = match (family, loopback) {
            (ASOCK_AF_INET, true) => Ipv4Addr::LOCALHOST.into(),
            (ASOCK_AF_INET, false) => Ipv4Addr::UNSPECIFIED.into(),
            (ASOCK_AF_INET6, true) => Ipv6Addr::LOCALHOST.into(),
            (ASOCK_AF_INET6, false) => Ipv6Addr::UNSPECIFIED.into(),
            (f, _) => {
                return Err(Error::new(
                    ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED,
                    format!("family {f} is not ASOCK_AF_INET (2) or ASOCK_AF_INET6 (23)"),
                ))
            }
        };
        *out_ep = to_c(&SocketAddr::new(ip, port));
        Ok(())
    })
}
