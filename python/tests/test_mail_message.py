"""A message built through the C ABI, read back by Python's own email
parser: UTF-8 names and subject decode, a leading-dot line survives, the
attachment comes back byte for byte, Bcc is nowhere in the message."""

import ctypes
import email
import email.policy
import os

import asock


def build():
    m = asock.MailMessage()
    asock.check(asock.asock_mail_message_new(ctypes.byref(m)), "new")
    asock.check(asock.asock_mail_message_set_from(m, "alice@example.com".encode(), "Alice Ärger".encode()), "from")
    asock.check(asock.asock_mail_message_add_to(m, b"bob@example.com", "Bøb".encode()), "to")
    asock.check(asock.asock_mail_message_add_cc(m, b"carol@example.com", None), "cc")
    asock.check(asock.asock_mail_message_add_bcc(m, b"hidden@example.com", None), "bcc")
    asock.check(asock.asock_mail_message_add_reply_to(m, b"replies@example.com", None), "reply-to")
    asock.check(asock.asock_mail_message_set_subject(m, "Grüße aus Köln – ✓".encode()), "subject")
    asock.check(asock.asock_mail_message_set_body(m, "Hello\n.leading dot\n..two dots\nGrüße\n".encode(), False), "body")
    asock.check(asock.asock_mail_message_add_alternate_view(m, b"<p>Hello</p>", b"text/html"), "view")
    asock.check(asock.asock_mail_message_add_header(m, b"X-Campaign", "spring ☀".encode()), "header")
    asock.check(asock.asock_mail_message_set_priority(m, asock.MAIL_PRIORITY_HIGH), "priority")
    return m


def test_message_reads_back_intact_in_pythons_parser():
    data = os.urandom(50_000) + bytes(range(256))
    m = build()
    try:
        blob = ctypes.create_string_buffer(data, len(data))
        asock.check(asock.asock_mail_message_add_attachment(m, b"report.bin", b"application/octet-stream", blob,
                                                            len(data)), "attachment")
        raw = asock.render_message(m)
    finally:
        asock.check(asock.asock_mail_message_free(m), "free")

    headers = raw.split(b"\r\n\r\n", 1)[0]
    assert b"hidden@example.com" not in raw
    assert b"\r\nbcc:" not in b"\r\n" + headers.lower()
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert b"\n" not in raw.replace(b"\r\n", b"")

    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == "Grüße aus Köln – ✓"
    assert msg["From"].addresses[0].display_name == "Alice Ärger"
    assert msg["From"].addresses[0].addr_spec == "alice@example.com"
    assert msg["To"].addresses[0].display_name == "Bøb"
    assert msg["Cc"].addresses[0].addr_spec == "carol@example.com"
    assert msg["Reply-To"].addresses[0].addr_spec == "replies@example.com"
    assert msg["X-Campaign"] == "spring ☀"
    assert msg["X-Priority"] == "1"
    assert msg["Date"] is not None and msg["Message-ID"].startswith("<")
    assert msg["Bcc"] is None

    parts = [p for p in msg.walk() if p.get_content_maintype() != "multipart"]
    plain = [p for p in parts if p.get_content_type() == "text/plain"][0]
    assert plain.get_content().replace("\r\n", "\n") == "Hello\n.leading dot\n..two dots\nGrüße\n"
    html = [p for p in parts if p.get_content_type() == "text/html"][0]
    assert html.get_content().strip() == "<p>Hello</p>"
    attachment = [p for p in parts if p.get_filename() == "report.bin"][0]
    assert attachment.get_content() == data


def test_injection_is_refused_from_python_too():
    m = asock.MailMessage()
    asock.check(asock.asock_mail_message_new(ctypes.byref(m)), "new")
    try:
        assert asock.asock_mail_message_set_subject(m, b"hi\r\nBcc: x@y.z") == asock.E_ARGUMENT
        assert asock.asock_mail_message_add_to(m, b"a@b.c\r\nRCPT TO:<x@y.z>", None) == asock.E_ARGUMENT
        assert asock.asock_mail_message_add_to(m, b"not an address", None) == asock.E_FORMAT
        assert "not a valid mail address" in asock.last_message()
    finally:
        asock.asock_mail_message_free(m)
