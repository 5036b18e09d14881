//! Host name resolution off the loop: getaddrinfo blocks, so it runs on a
//! small pool of resolver threads and reports back through a callback.

use crate::error::{from_gai, Error, Result, ASOCK_NO_DATA};
use crate::trace;
use crate::trace::LEVEL_VERBOSE;
use once_cell::sync::OnceCell;
use std::ffi::{CStr, CString};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use super::AddressFamily;

type Done = Box<dyn FnOnce(Result<Vec<SocketAddr>>) + Send>;

struct Job {
    host: String,
    port: u16,
    family: Option<AddressFamily>,
    done: Done,
}

const WORKERS: usize = 2;

static QUEUE: OnceCell<Mutex<Sender<Job>>> = OnceCell::new();

fn queue() -> &'static Mutex<Sender<Job>> {
    QUEUE.get_or_init(|| {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..WORKERS {
            let rx: Arc<Mutex<Receiver<Job>>> = rx.clone();
            let _ = std::thread::Builder::new().name(format!("asock-resolve-{n}")).spawn(move || loop {
                let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                    Ok(job) => job,
                    Err(_) => return,
                };
                let result = lookup(&job.host, job.port, job.family);
                (job.done)(result);
            });
        }
        Mutex::new(tx)
    })
}

/// Resolves `host` to addresses of `family` (None: any) on a resolver
/// thread, then calls `done` there.
pub fn resolve(host: &str, port: u16, family: Option<AddressFamily>, done: Done) {
    let job = Job { host: host.to_owned(), port, family, done };
    if let Err(std::sync::mpsc::SendError(job)) = queue().lock().unwrap_or_else(|p| p.into_inner()).send(job) {
        (job.done)(Err(Error::invalid_operation("the resolver threads are gone")));
    }
}

/// getaddrinfo, with its EAI_* codes mapped as .NET maps them.
pub fn lookup(host: &str, port: u16, family: Option<AddressFamily>) -> Result<Vec<SocketAddr>> {
    let c_host = CString::new(host).map_err(|_| Error::argument("the host name contains NUL"))?;
    // SAFETY: a zeroed addrinfo is a valid "no hints" value.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_family = match family {
        Some(AddressFamily::Inet) => libc::AF_INET,
        Some(AddressFamily::Inet6) => libc::AF_INET6,
        None => libc::AF_UNSPEC,
    };
    hints.ai_socktype = libc::SOCK_STREAM;
    let mut list: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: valid C string, hints and out pointer; freed below.
    let rc = unsafe { libc::getaddrinfo(c_host.as_ptr(), std::ptr::null(), &hints, &mut list) };
    if rc != 0 {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        // SAFETY: gai_strerror returns a static string.
        let text = unsafe { CStr::from_ptr(libc::gai_strerror(rc)) }.to_string_lossy().into_owned();
        trace!(LEVEL_VERBOSE, "socket", "resolve {host}: {text}");
        return Err(Error::new(from_gai(rc, errno), format!("resolve '{host}': {text}")));
    }
    let mut out = Vec::new();
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: walking the list getaddrinfo returned.
        let ai = unsafe { &*cur };
        match ai.ai_family {
            libc::AF_INET => {
                // SAFETY: AF_INET entries carry a sockaddr_in.
                let sa = unsafe { &*(ai.ai_addr as *const libc::sockaddr_in) };
                let ip = std::net::Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
                out.push(SocketAddr::V4(SocketAddrV4::new(ip, port)));
            }
            libc::AF_INET6 => {
                // SAFETY: AF_INET6 entries carry a sockaddr_in6.
                let sa = unsafe { &*(ai.ai_addr as *const libc::sockaddr_in6) };
                let ip = std::net::Ipv6Addr::from(sa.sin6_addr.s6_addr);
                out.push(SocketAddr::V6(SocketAddrV6::new(ip, port, sa.sin6_flowinfo, sa.sin6_scope_id)));
            }
            _ => {}
        }
        cur = ai.ai_next;
    }
    // SAFETY: the list came from getaddrinfo and is freed once.
    unsafe { libc::freeaddrinfo(list) };
    out.dedup();
    if out.is_empty() {
        return Err(Error::new(ASOCK_NO_DATA, format!("'{host}' has no address of the socket's family")));
    }
    trace!(LEVEL_VERBOSE, "socket", "resolve {host}: {out:?}");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::*;

    #[test]
    fn localhost_and_literals_resolve() {
        let v4 = lookup("localhost", 25, Some(AddressFamily::Inet)).unwrap();
        assert!(v4.iter().all(|a| a.is_ipv4() && a.port() == 25));
        assert_eq!(lookup("::1", 7, Some(AddressFamily::Inet6)).unwrap(), vec!["[::1]:7".parse().unwrap()]);
    }

    #[test]
    fn unknown_names_map_to_dotnet_codes() {
        let e = lookup("no-such-host.invalid", 25, Some(AddressFamily::Inet)).unwrap_err();
        assert!([ASOCK_HOST_NOT_FOUND, ASOCK_TRY_AGAIN, ASOCK_NO_RECOVERY, ASOCK_NO_DATA].contains(&e.code()), "{e}");
        // A literal of the other family has no address of this one.
        let e = lookup("127.0.0.1", 25, Some(AddressFamily::Inet6)).unwrap_err();
        assert!([ASOCK_NO_DATA, ASOCK_HOST_NOT_FOUND, ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED].contains(&e.code()), "{e}");
    }
}
