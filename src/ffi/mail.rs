//! Section 7, the message half: MailMessage.

use super::types::{asock_error, asock_mail_message};
use super::{c_str, guard, out};
use crate::error::{Error, Result};
use crate::handle::{HandleTable, Kind};
use crate::smtp::message::{MailMessage, Mailbox, Priority};
use std::ffi::c_char;
use std::sync::{Arc, Mutex};

pub const ASOCK_MAIL_PRIORITY_NORMAL: i32 = 0;
pub const ASOCK_MAIL_PRIORITY_LOW: i32 = 1;
pub const ASOCK_MAIL_PRIORITY_HIGH: i32 = 2;

/// .NET DeliveryNotificationOptions, for
/// `asock_mail_message_set_delivery_notification`.
pub const ASOCK_DSN_NONE: i32 = 0;
pub const ASOCK_DSN_ON_SUCCESS: i32 = 1;
pub const ASOCK_DSN_ON_FAILURE: i32 = 2;
pub const ASOCK_DSN_DELAY: i32 = 4;
pub const ASOCK_DSN_NEVER: i32 = 0x0800_0000;

static MESSAGES: HandleTable<Mutex<MailMessage>> = HandleTable::new(Kind::MailMessage);

fn with(m: asock_mail_message, f: impl FnOnce(&mut MailMessage) -> Result<()>) -> Result<()> {
    let msg = MESSAGES.get(m.id)?;
    let mut msg = msg.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut msg)
}

/// A mailbox argument: `address` required, `display_name` may be NULL.
fn mailbox(address: *const c_char, display_name: *const c_char) -> Result<Mailbox> {
    let address = c_str(address, "address")?;
    let name = if display_name.is_null() { None } else { Some(c_str(display_name, "display_name")?) };
    Mailbox::new(address, name)
}

/// The shape of every mailbox setter: check the mailbox, then store it.
fn set_mailbox(
    m: asock_mail_message,
    address: *const c_char,
    display_name: *const c_char,
    store: impl FnOnce(&mut MailMessage, Mailbox),
) -> asock_error {
    guard(|| {
        let mb = mailbox(address, display_name)?;
        with(m, |msg| {
            store(msg, mb);
            Ok(())
        })
    })
}

/// Snapshot of a message for sending (the caller may change it afterwards).
pub(crate) fn snapshot(m: asock_mail_message) -> Result<MailMessage> {
    if m.id == 0 {
        return Err(Error::null("the message"));
    }
    let msg = MESSAGES.get(m.id)?;
    let copy = msg.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(copy)
}

/// Creates an empty message. Free it with `asock_mail_message_free`.
#[no_mangle]
pub extern "C" fn asock_mail_message_new(out_message: *mut asock_mail_message) -> asock_error {
    guard(|| {
        let out_message = out(out_message, "out")?;
        *out_message = asock_mail_message { id: MESSAGES.insert(Arc::new(Mutex::new(MailMessage::default()))) };
        Ok(())
    })
}

/// Frees a message. `{0}` does nothing; twice → `ASOCK_E_OBJECT_DISPOSED`.
#[no_mangle]
pub extern "C" fn asock_mail_message_free(m: asock_mail_message) -> asock_error {
    guard(|| {
        if m.id != 0 {
            MESSAGES.remove(m.id)?;
        }
        Ok(())
    })
}

/// Sets From. `address` is checked when set: CR, LF or NUL in it or in
/// `display_name` (NULL: none) → `ASOCK_E_ARGUMENT` (header injection);
/// not an address → `ASOCK_E_FORMAT`. Non-ASCII display names are encoded
/// (RFC 2047); non-ASCII addresses need a server with SMTPUTF8.
#[no_mangle]
pub extern "C" fn asock_mail_message_set_from(
    m: asock_mail_message,
    address: *const c_char,
    display_name: *const c_char,
) -> asock_error {
    set_mailbox(m, address, display_name, |msg, mb| msg.from = Some(mb))
}

/// Sets Sender (checked as `asock_mail_message_set_from`).
#[no_mangle]
pub extern "C" fn asock_mail_message_set_sender(
    m: asock_mail_message,
    address: *const c_char,
    display_name: *const c_char,
) -> asock_error {
    set_mailbox(m, address, display_name, |msg, mb| msg.sender = Some(mb))
}

/// Adds a To recipient (checked as `asock_mail_message_set_from`).
#[no_mangle]
pub extern "C" fn asock_mail_message_add_to(
    m: asock_mail_message,
    address: *const c_char,
    display_name: *const c_char,
) -> asock_error {
    set_mailbox(m, address, display_name, |msg, mb| msg.to.push(mb))
}

/// Adds a Cc recipient (checked as `asock_mail_message_set_from`).
#[no_mangle]
pub extern "C" fn asock_mail_message_add_cc(
    m: asock_mail_message,
    address: *const c_char,
    display_name: *const c_char,
) -> asock_error {
    set_mailbox(m, address, display_name, |msg, mb| msg.cc.push(mb))
}

/// Adds a Bcc recipient: in the envelope only, never in a header.
#[no_mangle]
pub extern "C" fn asock_mail_message_add_bcc(
    m: asock_mail_message,
    address: *const c_char,
    display_name: *const c_char,
) -> asock_error {
    set_mailbox(m, address, display_name, |msg, mb| msg.bcc.push(mb))
}

/// Adds a Reply-To address (checked as `asock_mail_message_set_from`).
#[no_mangle]
pub extern "C" fn asock_mail_message_add_reply_to(
    m: asock_mail_message,
    address: *const c_char,
    display_name: *const c_char,
) -> asock_error {
    set_mailbox(m, address, display_name, |msg, mb| msg.reply_to.push(mb))
}

/// Sets the subject (UTF-8, copied; CR, LF or NUL → `ASOCK_E_ARGUMENT`).
#[no_mangle]
pub extern "C" fn asock_mail_message_set_subject(m: asock_mail_message, subject: *const c_char) -> asock_error {
    guard(|| {
        let subject = c_str(subject, "subject")?;
        with(m, |msg| msg.set_subject(subject))
    })
}

/// Sets the body (UTF-8, copied; any line endings), as text/plain or, with
/// `is_html`, text/html.
#[no_mangle]
pub extern "C" fn asock_mail_message_set_body(
    m: asock_mail_message,
    body: *const c_char,
    is_html: bool,
) -> asock_error {
    guard(|| {
        let body = c_str(body, "body")?;
        with(m, |msg| {
            msg.body = body.to_owned();
            msg.body_is_html = is_html;
            Ok(())
        })
    })
}

/// Adds an alternate view of the body (AlternateViews): `content` in
/// `media_type` ("text/html"; not a media type → `ASOCK_E_FORMAT`).
#[no_mangle]
pub extern "C" fn asock_mail_message_add_alternate_view(
    m: asock_mail_message,
    content: *const c_char,
    media_type: *const c_char,
) -> asock_error {
    guard(|| {
        let content = c_str(content, "content")?;
        let media_type = c_str(media_type, "media_type")?;
        with(m, |msg| msg.add_alternate_view(content, media_type))
    })
}

/// Adds an attachment: `len` bytes at `data` (copied; NULL only with `len`
/// 0), sent base64-encoded under file name `name` (CR, LF, NUL or empty →
/// `ASOCK_E_ARGUMENT`) with `media_type`.
#[no_mangle]
pub extern "C" fn asock_mail_message_add_attachment(
    m: asock_mail_message,
    name: *const c_char,
    media_type: *const c_char,
    data: *const u8,
    len: usize,
) -> asock_error {
    guard(|| {
        let name = c_str(name, "name")?;
        let media_type = c_str(media_type, "media_type")?;
        if data.is_null() && len > 0 {
            return Err(Error::null("data"));
        }
        let data = super::slice(data, len);
        with(m, |msg| msg.add_attachment(name, media_type, data))
    })
}

/// Adds a custom header. A name that is not an RFC 5322 field name →
/// `ASOCK_E_FORMAT`; CR, LF or NUL in name or value, or a header the message
/// writes itself (From, To, Bcc, Subject, Date, Content-Type, …) →
/// `ASOCK_E_ARGUMENT`. Non-ASCII values are encoded (RFC 2047).
#[no_mangle]
pub extern "C" fn asock_mail_message_add_header(
    m: asock_mail_message,
    name: *const c_char,
    value: *const c_char,
) -> asock_error {
    guard(|| {
        let name = c_str(name, "name")?;
        let value = c_str(value, "value")?;
        with(m, |msg| msg.add_header(name, value))
    })
}

/// Sets the priority: `ASOCK_MAIL_PRIORITY_NORMAL`, `_LOW` or `_HIGH` (else
/// `ASOCK_E_ARGUMENT`), written as X-Priority, Priority and Importance.
#[no_mangle]
pub extern "C" fn asock_mail_message_set_priority(m: asock_mail_message, priority: i32) -> asock_error {
    guard(|| {
        let p = match priority {
            ASOCK_MAIL_PRIORITY_NORMAL => Priority::Normal,
            ASOCK_MAIL_PRIORITY_LOW => Priority::Low,
            ASOCK_MAIL_PRIORITY_HIGH => Priority::High,
            p => return Err(Error::argument(format!("{p} is not an ASOCK_MAIL_PRIORITY_* value"))),
        };
        with(m, |msg| {
            msg.priority = p;
            Ok(())
        })
    })
}

/// Renders the message as it would be sent (RFC 5322, MIME, CRLF lines,
/// Bcc left out; Date and Message-ID generated) into `buf` (no NUL added)
/// and sets `*out_len` to its size. `buf` NULL with `len` 0 only asks for
/// the size. A buffer too small → `ASOCK_E_ARGUMENT_OUT_OF_RANGE`, nothing
/// written. Each call renders anew (its own Message-ID and Date, so sizes
/// of two calls may differ by a few bytes: leave room).
#[no_mangle]
pub extern "C" fn asock_mail_message_render(
    m: asock_mail_message,
    buf: *mut u8,
    len: usize,
    out_len: *mut usize,
) -> asock_error {
    guard(|| {
        let out_len = out(out_len, "out_len")?;
        let raw = snapshot(m)?.render()?;
        if len == 0 && buf.is_null() {
            *out_len = raw.len();
            return Ok(());
        }
        if buf.is_null() {
            return Err(Error::null("buf"));
        }
        if len < raw.len() {
            return Err(Error::out_of_range(format!("the message needs {} bytes, the buffer has {len}", raw.len())));
        }
        super::write_bytes(buf, &raw);
        *out_len = raw.len();
        Ok(())
    })
}

/// Asks for delivery status notifications (RFC 3461): `ASOCK_DSN_NONE`, or
/// an OR of `ASOCK_DSN_ON_SUCCESS`, `_ON_FAILURE` and `_DELAY`, or
/// `ASOCK_DSN_NEVER` alone; anything else → `ASOCK_E_ARGUMENT`. Sent as
/// `RCPT TO:<…> NOTIFY=…` when the server offers DSN; a server without DSN
/// gets the message without it, as .NET does.
#[no_mangle]
pub extern "C" fn asock_mail_message_set_delivery_notification(m: asock_mail_message, flags: i32) -> asock_error {
    guard(|| with(m, |msg| msg.set_delivery_notification(flags as u32)))
}
