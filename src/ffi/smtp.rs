//! Section 7, the client half: SmtpClient.

use super::handles;
use super::mail::snapshot;
use super::types::{
    asock_error, asock_failed_recipient, asock_loop, asock_mail_message, asock_send_completed_args,
    asock_send_completed_callback, asock_smtp_client,
};
use super::{c_str, c_text, guard, out, UserPtr};
use crate::error::{Error, Result, ASOCK_OK};
use crate::handle::{HandleTable, Kind};
use crate::smtp::auth::Credentials;
use crate::smtp::client::{Delivery, RecipientPolicy, Security, SendOutcome, Settings, SmtpClient};
use crate::smtp::{pickup, tls};
use std::ffi::{c_char, c_void, CString};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const ASOCK_SMTP_SECURITY_AUTO: i32 = 0;
pub const ASOCK_SMTP_SECURITY_NONE: i32 = 1;
pub const ASOCK_SMTP_SECURITY_STARTTLS: i32 = 2;
pub const ASOCK_SMTP_SECURITY_STARTTLS_WHEN_AVAILABLE: i32 = 3;
pub const ASOCK_SMTP_SECURITY_IMPLICIT_TLS: i32 = 4;

pub const ASOCK_SMTP_DELIVERY_NETWORK: i32 = 0;
pub const ASOCK_SMTP_DELIVERY_PICKUP_DIRECTORY: i32 = 1;

pub const ASOCK_SMTP_RECIPIENTS_ALL_OR_NOTHING: i32 = 0;
pub const ASOCK_SMTP_RECIPIENTS_DELIVER_TO_ACCEPTED: i32 = 1;

/// The client timeout's default, in milliseconds (.NET's).
pub const ASOCK_SMTP_DEFAULT_TIMEOUT_MS: i32 = 100_000;
/// How long an idle connection is kept by default, in milliseconds.
pub const ASOCK_SMTP_DEFAULT_IDLE_TIMEOUT_MS: i32 = 30_000;
/// `status_code` when no server reply decided the outcome (.NET
/// SmtpStatusCode.GeneralFailure).
pub const ASOCK_SMTP_STATUS_GENERAL_FAILURE: i32 = -1;

struct Client {
    core: Arc<SmtpClient>,
    completed: Mutex<asock_send_completed_callback>,
}

static CLIENTS: HandleTable<Client> = HandleTable::new(Kind::SmtpClient);

fn client(c: asock_smtp_client) -> Result<Arc<Client>> {
    if c.id == 0 {
        return Err(Error::null("the SMTP client"));
    }
    CLIENTS.get(c.id)
}

fn configure(c: asock_smtp_client, f: impl FnOnce(&mut Settings) -> Result<()>) -> asock_error {
    guard(|| client(c)?.core.configure(f))
}

/// A setting's text: no line breaks, which could end an SMTP command.
fn one_line<'a>(ptr: *const c_char, what: &str) -> Result<&'a str> {
    let s = c_str(ptr, what)?;
    if s.contains(['\r', '\n']) {
        return Err(Error::argument(format!("{what} contains a CR or LF")));
    }
    Ok(s)
}

fn millis(ms: i32, what: &str, zero_ok: bool) -> Result<Duration> {
    if ms < 0 || (ms == 0 && !zero_ok) {
        return Err(Error::out_of_range(format!("{what} {ms} ms is not allowed")));
    }
    Ok(Duration::from_millis(ms as u64))
}

/// Creates a client whose connections run on `loop` (`{0}`: the default
/// loop). Nothing is set: host and port are required before a network
/// send; security is `ASOCK_SMTP_SECURITY_AUTO`, the timeout 100 s.
#[no_mangle]
pub extern "C" fn asock_smtp_client_new(l: asock_loop, out_client: *mut asock_smtp_client) -> asock_error {
    guard(|| {
        let out_client = out(out_client, "out")?;
        let core = SmtpClient::new(handles::event_loop(l)?)?;
        let id = CLIENTS.insert(Arc::new(Client { core, completed: Mutex::new(None) }));
        *out_client = asock_smtp_client { id };
        Ok(())
    })
}

/// The server's name or address (the name is what its certificate must
/// match). NULL → `ASOCK_E_ARGUMENT_NULL`; "" is stored, and a network send
/// then fails with `ASOCK_E_INVALID_OPERATION`, as .NET's does.
#[no_mangle]
pub extern "C" fn asock_smtp_client_set_host(c: asock_smtp_client, host: *const c_char) -> asock_error {
    guard(|| {
        let host = one_line(host, "host")?;
        if host.contains([' ', '\t']) {
            return Err(Error::argument("the host contains white space"));
        }
        let host = host.to_owned();
        client(c)?.core.configure(|s| {
            s.host = Some(host);
            Ok(())
        })
    })
}

/// 1..65535, else `ASOCK_E_ARGUMENT_OUT_OF_RANGE`. No default: a network
/// send with no port set → `ASOCK_E_INVALID_OPERATION`.
#[no_mangle]
pub extern "C" fn asock_smtp_client_set_port(c: asock_smtp_client, port: i32) -> asock_error {
    guard(|| {
        let port = u16::try_from(port)
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| Error::out_of_range(format!("port {port} is not 1..65535")))?;
        client(c)?.core.configure(|s| {
            s.port = port;
            Ok(())
        })
    })
}

/// .NET EnableSsl: true = `ASOCK_SMTP_SECURITY_STARTTLS` (required),
/// false = `ASOCK_SMTP_SECURITY_NONE`.
#[no_mangle]
pub extern "C" fn asock_smtp_client_set_enable_ssl(c: asock_smtp_client, enable: bool) -> asock_error {
    configure(c, |s| {
        s.security = if enable { Security::StartTls } else { Security::None };
        Ok(())
    })
}

/// One of `ASOCK_SMTP_SECURITY_*`, else `ASOCK_E_ARGUMENT`.
#[no_mangle]
pub extern "C" fn asock_smtp_client_set_security(c: asock_smtp_client, mode: i32) -> asock_error {
    guard(|| {
        let security = match mode {
            ASOCK_SMTP_SECURITY_AUTO => Security::Auto,
            ASOCK_SMTP_SECURITY_NONE => Security::None,
            ASOCK_SMTP_SECURITY_STARTTLS => Security::StartTls,
            ASOCK_SMTP_SECURITY_STARTTLS_WHEN_AVAILABLE => Security::StartTlsWhenAvailable,
            ASOCK_SMTP_SECURITY_IMPLICIT_TLS => Security::ImplicitTls,
            _ => return Err(Error::argument(format!("{mode} is not an ASOCK_SMTP_SECURITY_* mode"))),
        };
        client(c)?.core.configure(|s| {
            s.security = security;
            Ok(())
        })
    })
}

fn set_creds(
    c: asock_smtp_client,
    user: *const c_char,
    secret: *const c_char,
    make: impl FnOnce(String, String) -> Credentials,
) -> asock_error {
    guard(|| {
        let creds = if user.is_null() && secret.is_null() {
            None
        } else {
            Some(make(c_str(user, "user")?.to_owned(), c_str(secret, "the secret")?.to_owned()))
        };
        client(c)?.core.configure(|s| {
            s.credentials = creds;
            Ok(())
        })
    })
}

/// User name and password for AUTH PLAIN or LOGIN (whichever the server
/// offers, PLAIN first). Both NULL clears them. Copied; sent only over TLS
/// unless `asock_smtp_client_set_allow_plaintext_auth` says otherwise, and
/// shown as `***` in traces.
#[no_mangle]
pub extern "C" fn asock_smtp_client_set_credentials(
    c: asock_smtp_client,
    user: *const c_char,
    password: *const c_char,
) -> asock_error {
    set_creds(c, user, password, |user, password| Credentials::Password { user, password })
}

/// User and OAuth 2 access token for AUTH XOAUTH2 (replaces any
/// password). Both NULL clears them. The same rules as credentials.
#[no_mangle]
pub extern "C" fn asock_smtp_client_set_oauth2_token(
    c: asock_smtp_client,
    user: *const c_char,
    token: *const c_char,
) -> asock_error {
    set_creds(c, user, token, |user, token| Credentials::OAuth2 { user, token })
}

/// Allows AUTH over a connection without TLS (default false: the send
/// fails with `ASOCK_E_SMTP_AUTHENTICATION` before any secret is sent).
#[no_mangle]
pub extern "C" fn asock_smtp_client_set_allow_plaintext_auth(c: asock_smtp_client, allow: bool) -> asock_error {
    configure(c, |s| {
        s.allow_plaintext_auth = allow;
        Ok(())
    })
}

/// Bounds every wait of a send — resolving, connecting, each reply, each
/// write — for send_async as well as send. > 0, else
/// `ASOCK_E_ARGUMENT_OUT_OF_RANGE`. Default 100000.
#[no_mangle]
pub extern "C" fn asock_smtp_client_set_timeout(c: asock_smtp_client, timeout_ms: i32) -> asock_error {
    guard(|| {
        let d = millis(timeout_ms, "timeout", false)?;
        client(c)?.core.configure(|s| {
            s.timeout = d;
            Ok(())
        })
    })
}

/// How long a connection is kept after a send for the next one (default
/// 30000); 0 says QUIT after every send. < 0 → `ASOCK_E_ARGUMENT_OUT_OF_RANGE`.
#[no_mangle]
pub extern "C" fn asock_smtp_client_set_idle_timeout(c: asock_smtp_client, idle_ms: i32) -> asock_error {
    guard(|| {
        let d = millis(idle_ms, "idle timeout", true)?;
        client(c)?.core.configure(|s| {
            s.idle_timeout = d;
            Ok(())
        })
    })
}

/// `ASOCK_SMTP_DELIVERY_NETWORK` or `_PICKUP_DIRECTORY`, else `ASOCK_E_ARGUMENT`.
#[no_mangle]
pub extern "C" fn asock_smtp_client_set_delivery_method(c: asock_smtp_client, method: i32) -> asock_error {
    guard(|| {
        let d = match method {
            ASOCK_SMTP_DELIVERY_NETWORK => Delivery::Network,
            ASOCK_SMTP_DELIVERY_PICKUP_DIRECTORY => Delivery::PickupDirectory,
            _ => return Err(Error::argument(format!("{method} is not an ASOCK_SMTP_DELIVERY_* method"))),
        };
        client(c)?.core.configure(|s| {
            s.delivery = d;
            Ok(())
        })
    })
}

/// The directory pickup delivery writes `<unique>.eml` files to. Must be
/// absolute (else `ASOCK_E_ARGUMENT`); it must exist when a send runs (else
/// that send completes with `ASOCK_E_IO`).
#[no_mangle]
pub extern "C" fn asock_smtp_client_set_pickup_directory(c: asock_smtp_client, path: *const c_char) -> asock_error {
    guard(|| {
        let dir = pickup::check_dir(c_str(path, "path")?)?;
        client(c)?.core.configure(|s| {
            s.pickup_dir = Some(dir);
            Ok(())
        })
    })
}

/// The SendCompleted handler (NULL: none). Read when a send completes.
#[no_mangle]
pub extern "C" fn asock_smtp_client_set_send_completed(
    c: asock_smtp_client,
    cb: asock_send_completed_callback,
) -> asock_error {
    guard(|| {
        let cl = client(c)?;
        *cl.completed.lock().unwrap_or_else(|p| p.into_inner()) = cb;
        Ok(())
    })
}

/// `ASOCK_SMTP_RECIPIENTS_ALL_OR_NOTHING` (default) or
/// `_DELIVER_TO_ACCEPTED`, else `ASOCK_E_ARGUMENT`.
#[no_mangle]
pub extern "C" fn asock_smtp_client_set_recipient_policy(c: asock_smtp_client, policy: i32) -> asock_error {
    guard(|| {
        let p = match policy {
            ASOCK_SMTP_RECIPIENTS_ALL_OR_NOTHING => RecipientPolicy::AllOrNothing,
            ASOCK_SMTP_RECIPIENTS_DELIVER_TO_ACCEPTED => RecipientPolicy::DeliverToAccepted,
            _ => return Err(Error::argument(format!("{policy} is not an ASOCK_SMTP_RECIPIENTS_* policy"))),
        };
        client(c)?.core.configure(|s| {
            s.policy = p;
            Ok(())
        })
    })
}

/// Trusts the CA certificates in a PEM file, besides the platform's roots.
/// Read now: unreadable → `ASOCK_E_IO`; no certificate in it →
/// `ASOCK_E_FORMAT`.
#[no_mangle]
pub extern "C" fn asock_smtp_client_add_trusted_ca_file(c: asock_smtp_client, pem_path: *const c_char) -> asock_error {
    guard(|| {
        let certs = tls::read_ca_file(c_str(pem_path, "pem_path")?)?;
        client(c)?.core.configure(|s| {
            s.trusted.extend(certs);
            Ok(())
        })
    })
}

/// The name sent with EHLO (default: the connection's own address as an
/// address literal, e.g. `[127.0.0.1]`). No white space.
#[no_mangle]
pub extern "C" fn asock_smtp_client_set_client_domain(c: asock_smtp_client, domain: *const c_char) -> asock_error {
    guard(|| {
        let d = one_line(domain, "domain")?;
        if d.is_empty() || d.contains([' ', '\t']) {
            return Err(Error::argument("the client domain is empty or contains white space"));
        }
        let d = d.to_owned();
        client(c)?.core.configure(|s| {
            s.client_domain = Some(d);
            Ok(())
        })
    })
}

fn deliver(cl: &Client, handle: asock_smtp_client, token: UserPtr, o: SendOutcome) {
    let cb = *cl.completed.lock().unwrap_or_else(|p| p.into_inner());
    let Some(cb) = cb else { return };
    let message = c_text(&o.message);
    let strings: Vec<(CString, CString)> = o.failed.iter().map(|f| (c_text(&f.address), c_text(&f.response))).collect();
    let failed: Vec<asock_failed_recipient> = o
        .failed
        .iter()
        .zip(&strings)
        .map(|(f, (a, r))| asock_failed_recipient { address: a.as_ptr(), status_code: f.status, response: r.as_ptr() })
        .collect();
    let args = asock_send_completed_args {
        error: o.error,
        status_code: o.status,
        socket_error: o.socket_error,
        cancelled: o.cancelled,
        user_token: token.0,
        message: message.as_ptr(),
        failed_recipients: if failed.is_empty() { std::ptr::null() } else { failed.as_ptr() },
        failed_recipient_count: failed.len(),
    };
    // SAFETY: the user's SendCompleted function, with args valid for the call.
    unsafe { cb(handle, &args) }
}

/// SendAsync: checks, captures the message (free or change it right
/// after) and returns; SendCompleted runs exactly once later, on the
/// loop's thread. Refused, with nothing started: message `{0}` →
/// `ASOCK_E_ARGUMENT_NULL`; client freed → `ASOCK_E_OBJECT_DISPOSED`; no
/// From, a send in progress, no To/Cc/Bcc, network with no host (or "")
/// or no port, TLS required with pickup delivery, pickup with no directory
/// → `ASOCK_E_INVALID_OPERATION`.
#[no_mangle]
pub extern "C" fn asock_smtp_client_send_async(
    c: asock_smtp_client,
    m: asock_mail_message,
    user_token: *mut c_void,
) -> asock_error {
    guard(|| {
        if m.id == 0 {
            return Err(Error::null("the message"));
        }
        let cl = client(c)?;
        let msg = snapshot(m)?;
        let token = UserPtr(user_token);
        let keep = cl.clone();
        cl.core.send_async(&msg, Box::new(move |o| deliver(&keep, c, token, o)))
    })
}

/// SendAsyncCancel: the send in progress completes now with `cancelled`
/// (its SendCompleted runs on the loop thread, once); with none in
/// progress, nothing happens. ASOCK_OK either way.
#[no_mangle]
pub extern "C" fn asock_smtp_client_send_async_cancel(c: asock_smtp_client) -> asock_error {
    guard(|| {
        client(c)?.core.cancel();
        Ok(())
    })
}

/// Send: the same work as send_async, waited for; SendCompleted is not
/// called. Returns the outcome's code, with the server's reply or the
/// reason in `asock_error_message`. On the loop's own thread →
/// `ASOCK_E_INVALID_OPERATION` (the loop could not run the send).
#[no_mangle]
pub extern "C" fn asock_smtp_client_send(c: asock_smtp_client, m: asock_mail_message) -> asock_error {
    guard(|| {
        if m.id == 0 {
            return Err(Error::null("the message"));
        }
        let cl = client(c)?;
        let msg = snapshot(m)?;
        let o = cl.core.send(&msg)?;
        if o.error != ASOCK_OK {
            return Err(Error::new(o.error, o.message));
        }
        Ok(())
    })
}

/// Dispose: a send in progress completes with `cancelled`; an idle
/// connection gets QUIT (asynchronously) and is closed. Every later call
/// with the handle → `ASOCK_E_OBJECT_DISPOSED`. `{0}` does nothing.
#[no_mangle]
pub extern "C" fn asock_smtp_client_free(c: asock_smtp_client) -> asock_error {
    guard(|| {
        if c.id == 0 {
            return Ok(());
        }
        CLIENTS.remove(c.id)?.core.dispose();
        Ok(())
    })
}
