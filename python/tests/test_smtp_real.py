"""The SMTP client against a real SMTP server (aiosmtpd) on loopback: what
arrives (read back with Python's email parser), SMTP smuggling, STARTTLS
and implicit TLS, AUTH PLAIN/LOGIN/XOAUTH2 and the plaintext refusal,
secrets masked in traces, recipient policies, connection reuse and QUIT,
and the blocking send."""

import base64
import email
import email.policy
import os
import re
import socket

import pytest

import asock
from smtp_servers import PASSWORD, TOKEN, USER, Client, ScriptedServer, Trace, mail, smtp_server

# aiosmtpd sets the deprecated Session.login_data itself on every AUTH.
pytestmark = pytest.mark.filterwarnings("ignore:Session.login_data is deprecated")

ALICE = ("alice@example.com", "Alice Ärger")
REJECT_RESPONSE = "550 5.1.1 <{}>: Recipient address rejected: User unknown"


def lines_of(text):
    """Line endings normalized: what a text body may legitimately change."""
    return re.sub(r"\r\n|\r|\n", "\n", text)


def parse(data):
    return email.message_from_bytes(data, policy=email.policy.default)


def plain_text(msg):
    part = next(p for p in msg.walk() if p.get_content_type() == "text/plain")
    return lines_of(part.get_content())


def ok(r, token=None):
    assert r["error"] == asock.OK, str(r)
    assert r["status_code"] == 250, str(r)
    assert r["socket_error"] == asock.OK and not r["cancelled"] and r["failed"] == [], str(r)
    assert r["user_token"] == token, str(r)


# --- 1. what arrives ---------------------------------------------------------------
def test_plain_send_arrives_intact():
    attachment = os.urandom(50_000) + bytes(range(256))
    body = "Hello Bøb,\n.leading dot\n..two dots\n.\nGrüße\n"
    subject = "Grüße aus Köln – ✓"
    with smtp_server() as srv, Client(srv.port) as c:
        with mail(from_addr=ALICE[0], from_name=ALICE[1], to=[("bob@example.com", "Bøb")],
                  cc=["carol@example.com"], bcc=["hidden@example.com"], subject=subject, body=body,
                  attachments=[("data.bin", "application/octet-stream", attachment)]) as m:
            assert c.send_async(m, 0xC0FFEE) == asock.OK
        r = c.wait()
        ok(r, 0xC0FFEE)
        assert r["message"] == "250 2.0.0 Ok: queued as Q1"

        assert len(srv.rec.messages) == 1
        got = srv.rec.messages[0]
        assert got["mail_from"] == "alice@example.com"
        assert sorted(got["rcpt_tos"]) == ["bob@example.com", "carol@example.com", "hidden@example.com"]
        assert b"hidden" not in got["data"]
        assert not got["tls"]  # AUTO, and the server offers no STARTTLS

        msg = parse(got["data"])
        assert msg["Subject"] == subject
        assert msg["From"].addresses[0].display_name == ALICE[1]
        assert msg["From"].addresses[0].addr_spec == ALICE[0]
        assert msg["To"].addresses[0].display_name == "Bøb"
        assert msg["To"].addresses[0].addr_spec == "bob@example.com"
        assert msg["Cc"].addresses[0].addr_spec == "carol@example.com"
        assert msg["Bcc"] is None
        assert plain_text(msg) == body
        att = next(p for p in msg.walk() if p.get_filename() == "data.bin")
        assert att.get_content() == attachment


# --- 2. SMTP smuggling --------------------------------------------------------------
SMUGGLE_ENDINGS = ["\n.\n", "\r\n.\r\n", "\n.\r\n", "\r.\r"]


def smuggling_body(end):
    return (f"first line{end}MAIL FROM:<mallory@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n"
            f"From: ceo@example.com\r\nSubject: smuggled\r\n\r\nsmuggled text{end}text after the end\n")


def test_smuggling_sequences_stay_inside_one_message():
    with smtp_server() as srv, Client(srv.port) as c:
        for i, end in enumerate(SMUGGLE_ENDINGS):
            body = smuggling_body(end)
            with mail(body=body, subject=f"send {i}") as m:
                ok(c.send_and_wait(m, i + 1), i + 1)
            assert len(srv.rec.messages) == i + 1, f"{end!r}: one send must be one message"
            got = srv.rec.messages[i]
            assert got["rcpt_tos"] == ["bob@example.com"]
            msg = parse(got["data"])
            assert msg["Subject"] == f"send {i}"
            assert plain_text(msg) == lines_of(body), repr(end)
        verbs = srv.rec.verbs()
        assert verbs.count("MAIL") == len(SMUGGLE_ENDINGS)
        assert verbs.count("DATA") == len(SMUGGLE_ENDINGS)
        assert all("victim" not in r for m in srv.rec.messages for r in m["rcpt_tos"])


def test_smuggling_sequences_never_reach_the_wire():
    """The raw DATA payload, as a server reads it: CRLF lines only, and
    the one end-of-data sequence is the final one."""
    body = "".join(f"part {i}{end}" for i, end in enumerate(SMUGGLE_ENDINGS)) + "\r\n.\r\nlast\n"

    def server(p):
        p.send(b"220 fake ESMTP\r\n")
        assert p.line().startswith("EHLO ")
        p.send(b"250-fake\r\n250 8BITMIME\r\n")
        assert p.line().startswith("MAIL FROM:<alice@example.com>")
        p.send(b"250 OK\r\n")
        assert p.line() == "RCPT TO:<bob@example.com>"
        p.send(b"250 OK\r\n")
        assert p.line() == "DATA"
        p.send(b"354 go ahead\r\n")
        payload = p.until(b"\r\n.\r\n")
        p.send(b"250 2.0.0 queued\r\n")
        assert p.line() == "QUIT"
        p.send(b"221 bye\r\n")
        return payload

    with ScriptedServer(server) as fake:
        with Client(fake.port, idle_timeout_ms=0) as c, mail(body=body) as m:
            ok(c.send_and_wait(m))
        payload = fake.join()
    assert payload.endswith(b"\r\n.\r\n")
    lines = payload[:-3].split(b"\r\n")
    assert lines[-1] == b""
    assert all(b"\r" not in ln and b"\n" not in ln for ln in lines), "a bare CR or LF reached the wire"
    assert b"." not in lines[:-1], "an end-of-data line inside the message"
    assert b".." in lines  # the body's lone dots, stuffed


# --- 3. TLS ----------------------------------------------------------------------------
def assert_ehlo_again_after_starttls(trace):
    cmds = trace.commands()
    assert "STARTTLS" in cmds, cmds
    i = cmds.index("STARTTLS")
    assert cmds[i - 1].startswith("EHLO "), cmds
    assert cmds[i + 1].startswith("EHLO "), cmds
    assert any(t.startswith("TLS established") for t in trace.lines())


def test_starttls_in_auto_mode():
    with smtp_server(starttls=True) as srv, Trace() as tr, Client(srv.port, host="localhost", ca=True) as c:
        with mail() as m:
            ok(c.send_and_wait(m, 7), 7)
        assert_ehlo_again_after_starttls(tr)
        got = srv.rec.messages[0]
        assert got["tls"] and got["session_ssl"]
        cmds = [(v, t) for (_, v, _, t) in srv.rec.commands]
        assert cmds[:4] == [("EHLO", False), ("STARTTLS", False), ("EHLO", True), ("MAIL", True)]


def test_starttls_required_with_enable_ssl():
    with smtp_server(starttls=True, require_starttls=True) as srv, Trace() as tr, \
            Client(srv.port, host="127.0.0.1", ca=True, enable_ssl=True) as c:
        with mail() as m:
            ok(c.send_and_wait(m))
        assert_ehlo_again_after_starttls(tr)
        assert srv.rec.messages[0]["tls"] and srv.rec.messages[0]["session_ssl"]


def test_implicit_tls():
    with smtp_server(implicit_tls=True) as srv, Trace() as tr, \
            Client(srv.port, host="localhost", ca=True, security=asock.SMTP_SECURITY_IMPLICIT_TLS) as c:
        with mail() as m:
            ok(c.send_and_wait(m))
        assert "STARTTLS" not in tr.commands()
        assert any(t.startswith("TLS established") for t in tr.lines())
        assert srv.rec.commands and all(tls for (_, _, _, tls) in srv.rec.commands)
        assert srv.rec.messages[0]["tls"]


def test_starttls_when_available_and_none_go_plain():
    # No STARTTLS offered: WHEN_AVAILABLE sends in plaintext.
    with smtp_server() as srv, Client(srv.port, security=asock.SMTP_SECURITY_STARTTLS_WHEN_AVAILABLE) as c:
        with mail() as m:
            ok(c.send_and_wait(m))
        assert not srv.rec.messages[0]["tls"]
    # STARTTLS offered, security NONE: never asked for.
    with smtp_server(starttls=True) as srv, Client(srv.port, security=asock.SMTP_SECURITY_NONE) as c:
        with mail() as m:
            ok(c.send_and_wait(m))
        assert "STARTTLS" not in srv.rec.verbs()
        assert not srv.rec.messages[0]["tls"]


# --- 4. AUTH ---------------------------------------------------------------------------
def auth_server(**kw):
    return smtp_server(starttls=True, require_starttls=True, auth=True, **kw)


def test_auth_plain_over_starttls():
    with auth_server() as srv, Client(srv.port, host="localhost", ca=True, credentials=(USER, PASSWORD)) as c:
        with mail() as m:
            ok(c.send_and_wait(m))
        assert srv.rec.auths == [("PLAIN", USER, True)]
        auth_cmds = [(a.split()[0], tls) for (_, v, a, tls) in srv.rec.commands if v == "AUTH"]
        assert auth_cmds == [("PLAIN", True)]
        assert len(srv.rec.messages) == 1


def test_auth_wrong_password():
    with auth_server() as srv, Client(srv.port, host="localhost", ca=True, credentials=(USER, "wrong")) as c:
        with mail() as m:
            r = c.send_and_wait(m, 3)
        assert r["error"] == asock.E_SMTP_AUTHENTICATION, str(r)
        assert r["status_code"] == 535, str(r)
        assert r["user_token"] == 3
        assert "535" in r["message"]
        assert srv.rec.auths == [("PLAIN", USER, False)]
        assert "MAIL" not in srv.rec.verbs()
        assert srv.rec.messages == []


def test_auth_login_when_plain_is_not_offered():
    with auth_server(auth_exclude=["PLAIN"]) as srv, Trace() as tr, \
            Client(srv.port, host="localhost", ca=True, credentials=(USER, PASSWORD)) as c:
        with mail() as m:
            ok(c.send_and_wait(m))
        assert srv.rec.auths == [("LOGIN", USER, True)]
        cmds = tr.commands()
        i = cmds.index("AUTH LOGIN")
        assert cmds[i + 1:i + 3] == ["***", "***"], cmds
        assert_no_secrets(tr, PASSWORD)


def test_auth_xoauth2():
    with smtp_server(starttls=True, require_starttls=True, oauth=True) as srv, Trace() as tr, \
            Client(srv.port, host="localhost", ca=True, oauth2=(USER, TOKEN)) as c:
        with mail() as m:
            ok(c.send_and_wait(m))
        assert srv.rec.auths == [("XOAUTH2", USER, True)]
        assert "AUTH XOAUTH2 ***" in tr.commands()
        assert_no_secrets(tr, TOKEN, xoauth2=True)


def test_auth_xoauth2_rejected_token():
    with smtp_server(starttls=True, require_starttls=True, oauth=True) as srv, \
            Client(srv.port, host="localhost", ca=True, oauth2=(USER, "expired-token")) as c:
        with mail() as m:
            r = c.send_and_wait(m)
        assert r["error"] == asock.E_SMTP_AUTHENTICATION, str(r)
        assert r["status_code"] == 535, str(r)
        assert srv.rec.auths == [("XOAUTH2", USER, False)]
        assert srv.rec.messages == []


@pytest.mark.parametrize("security", [asock.SMTP_SECURITY_NONE, asock.SMTP_SECURITY_AUTO])
def test_credentials_are_not_sent_in_plaintext(security):
    # The server would take AUTH without TLS; the client must not offer it.
    with smtp_server(auth=True, auth_require_tls=False) as srv, \
            Client(srv.port, security=security, credentials=(USER, PASSWORD)) as c:
        with mail() as m:
            r = c.send_and_wait(m, 9)
        assert r["error"] == asock.E_SMTP_AUTHENTICATION, str(r)
        assert r["status_code"] == -1, str(r)
        assert r["user_token"] == 9
        verbs = srv.rec.verbs()
        assert verbs and "AUTH" not in verbs and "MAIL" not in verbs, verbs
        assert srv.rec.auths == []


def test_plaintext_auth_when_allowed():
    with smtp_server(auth=True, auth_require_tls=False) as srv, \
            Client(srv.port, security=asock.SMTP_SECURITY_NONE, credentials=(USER, PASSWORD),
                   allow_plaintext_auth=True) as c:
        with mail() as m:
            ok(c.send_and_wait(m))
        assert srv.rec.auths == [("PLAIN", USER, True)]
        assert [tls for (_, v, _, tls) in srv.rec.commands if v == "AUTH"] == [False]
        assert len(srv.rec.messages) == 1


# --- 5. secrets in traces ----------------------------------------------------------
def assert_no_secrets(trace, secret, xoauth2=False):
    forms = {secret, base64.b64encode(secret.encode()).decode(),
             base64.b64encode(f"\0{USER}\0{secret}".encode()).decode()}
    if xoauth2:
        forms.add(base64.b64encode(f"user={USER}\x01auth=Bearer {secret}\x01\x01".encode()).decode())
    texts = trace.all_text()
    assert texts
    for t in texts:
        for f in forms:
            assert f not in t, f"a secret in the trace: {t!r}"


def test_trace_masks_the_password():
    with auth_server() as srv, Trace() as tr:
        with Client(srv.port, host="localhost", ca=True, credentials=(USER, PASSWORD)) as c, mail() as m:
            ok(c.send_and_wait(m))
        with Client(srv.port, host="localhost", ca=True, credentials=(USER, PASSWORD + "x")) as c, mail() as m:
            r = c.send_and_wait(m)
            assert r["error"] == asock.E_SMTP_AUTHENTICATION, str(r)
            assert PASSWORD not in r["message"]
    cmds = tr.commands()
    assert cmds.count("AUTH PLAIN ***") == 2, cmds
    assert_no_secrets(tr, PASSWORD)
    assert_no_secrets(tr, PASSWORD + "x")
    assert any(t.startswith("C: <message data, ") and t.endswith(" bytes, then .>") for t in tr.lines())
    assert any(t.startswith("S: 235 ") for t in tr.lines())


# --- 6. recipient policies ---------------------------------------------------------
RCPTS = ["bob@example.com", "reject1@example.com", "carol@example.com", "reject2@example.com"]
FAILED = [(a, 550, REJECT_RESPONSE.format(a)) for a in ("reject1@example.com", "reject2@example.com")]


def test_all_or_nothing_delivers_to_nobody():
    with smtp_server() as srv, Client(srv.port) as c:
        with mail(to=RCPTS) as m:
            r = c.send_and_wait(m, 5)
        assert r["error"] == asock.E_SMTP_FAILED_RECIPIENTS, str(r)
        assert r["status_code"] == 550, str(r)
        assert r["failed"] == FAILED
        assert r["user_token"] == 5
        assert srv.rec.messages == []
        verbs = srv.rec.verbs()
        assert "DATA" not in verbs and "RSET" in verbs, verbs
        # The connection was left clean: the next send uses it.
        with mail() as m:
            ok(c.send_and_wait(m))
        assert srv.rec.connections() == 1
        assert srv.rec.messages[0]["rcpt_tos"] == ["bob@example.com"]


def test_deliver_to_accepted():
    with smtp_server() as srv, Client(srv.port, policy=asock.SMTP_RECIPIENTS_DELIVER_TO_ACCEPTED) as c:
        with mail(to=RCPTS) as m:
            r = c.send_and_wait(m)
        assert r["error"] == asock.E_SMTP_FAILED_RECIPIENTS, str(r)
        assert r["status_code"] == 250, str(r)
        assert r["failed"] == FAILED
        assert len(srv.rec.messages) == 1
        assert srv.rec.messages[0]["rcpt_tos"] == ["bob@example.com", "carol@example.com"]
        # Every recipient refused: nothing to deliver, whatever the policy.
        with mail(to=["reject3@example.com"]) as m:
            r = c.send_and_wait(m)
        assert r["error"] == asock.E_SMTP_FAILED_RECIPIENTS, str(r)
        assert r["status_code"] == 550, str(r)
        assert r["failed"] == [("reject3@example.com", 550, REJECT_RESPONSE.format("reject3@example.com"))]
        assert len(srv.rec.messages) == 1


def test_all_or_nothing_with_pipelining_sends_no_message_data():
    """A pipelining server has DATA's 354 in hand before the client can
    withhold DATA: the client must then close without sending the data."""
    def server(p):
        p.send(b"220 fake ESMTP\r\n")
        assert p.line().startswith("EHLO ")
        p.send(b"250-fake\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
        envelope = [p.line() for _ in range(4)]
        p.send(b"250 OK\r\n250 OK\r\n" + REJECT_RESPONSE.format("reject@example.com").encode()
               + b"\r\n354 go ahead\r\n")
        return envelope, p.until_eof()

    with ScriptedServer(server) as fake:
        with Client(fake.port) as c, mail(to=["bob@example.com", "reject@example.com"]) as m:
            r = c.send_and_wait(m)
        envelope, after = fake.join()
    assert envelope == ["MAIL FROM:<alice@example.com>", "RCPT TO:<bob@example.com>",
                        "RCPT TO:<reject@example.com>", "DATA"]
    assert r["error"] == asock.E_SMTP_FAILED_RECIPIENTS, str(r)
    assert r["status_code"] == 550, str(r)
    assert r["failed"] == [("reject@example.com", 550, REJECT_RESPONSE.format("reject@example.com"))]
    assert after == b"", f"sent after DATA: {after[:80]!r}"


# --- 7. connection reuse and QUIT --------------------------------------------------
def test_consecutive_sends_reuse_one_connection_and_free_says_quit():
    with smtp_server() as srv:
        c = Client(srv.port)
        try:
            for i in range(5):
                with mail(subject=f"n{i}") as m:
                    ok(c.send_and_wait(m, i + 1), i + 1)
            assert len(srv.rec.messages) == 5
            assert srv.rec.connections() == 1
            assert srv.rec.verbs().count("EHLO") == 1
            assert srv.rec.quits == []  # idle, kept for the next send
        finally:
            c.free()
        srv.rec.wait_for(lambda r: len(r.quits) == 1)
        assert srv.rec.connections() == 1


def test_idle_timeout_zero_quits_after_each_send():
    with smtp_server() as srv, Client(srv.port, idle_timeout_ms=0) as c:
        for i in range(2):
            with mail() as m:
                ok(c.send_and_wait(m))
            srv.rec.wait_for(lambda r, n=i + 1: len(r.quits) == n)
        assert srv.rec.connections() == 2


def test_server_dropping_the_idle_connection_is_not_an_error():
    with smtp_server(idle_timeout=0.5) as srv, Trace() as tr, Client(srv.port) as c:
        with mail() as m:
            ok(c.send_and_wait(m, 1), 1)
        peer = srv.rec.commands[0][0]
        srv.rec.wait_for(lambda r: peer in r.closed)  # the server hung up on the idle client
        with mail() as m:
            ok(c.send_and_wait(m, 2), 2)
        assert len(srv.rec.messages) == 2
        assert srv.rec.connections() == 2
    assert not any(t.startswith("send failed") for t in tr.lines())


# --- 10. the blocking send ---------------------------------------------------------
def test_blocking_send():
    with smtp_server() as srv, Client(srv.port) as c:
        with mail(subject="blocking") as m:
            code, _ = c.send(m)
        assert code == asock.OK
        assert parse(srv.rec.messages[0]["data"])["Subject"] == "blocking"

        with mail(to=["reject@example.com"]) as m:
            code, text = c.send(m)
        assert code == asock.E_SMTP_FAILED_RECIPIENTS
        assert REJECT_RESPONSE.format("reject@example.com") in text, text
        assert len(srv.rec.messages) == 1

        # SendCompleted ran for neither: the first result is the async send's.
        with mail() as m:
            ok(c.send_and_wait(m, 42), 42)
        assert c.results.empty()
        assert srv.rec.connections() == 1


def test_blocking_send_connection_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, not listening: connects are refused
        with Client(s.getsockname()[1]) as c, mail() as m:
            code, text = c.send(m)
    assert code == asock.E_SMTP_CONNECT, (code, text)
    assert text
