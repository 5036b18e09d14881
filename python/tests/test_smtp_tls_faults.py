"""The SMTP client when things go wrong: certificates it must refuse, TLS
that is not TLS, a STARTTLS reply with bytes smuggled after it, STARTTLS
required but not offered, connect refused, a server that never answers,
cancelling, and a kept connection the server dropped. Real servers (aiosmtpd) where they can misbehave that way,
scripted ones (smtp_servers.ScriptedServer) where they cannot."""

import ctypes
import socket
import struct
import threading
import time

import pytest

import asock
from smtp_servers import WAIT, Client, ScriptedServer, Trace, mail, smtp_server

pytestmark = pytest.mark.filterwarnings("ignore:Session.login_data is deprecated")


def failed(r, error, status=-1):
    assert r["error"] == error, str(r)
    assert r["status_code"] == status, str(r)
    assert not r["cancelled"], str(r)
    assert r["message"], str(r)


# --- 8. certificates ---------------------------------------------------------------
def test_untrusted_issuer_is_refused():
    with smtp_server(starttls=True) as srv, Client(srv.port, host="localhost", enable_ssl=True) as c:
        with mail() as m:
            r = c.send_and_wait(m, 11)
        failed(r, asock.E_SMTP_CERTIFICATE)
        assert r["user_token"] == 11
        assert "issuer" in r["message"].lower(), r["message"]
        assert "MAIL" not in srv.rec.verbs()
        assert srv.rec.messages == []


def test_certificate_for_another_name_is_refused():
    # Valid chain (the CA is trusted), but issued for "localhost" only.
    with smtp_server(starttls=True, localhost_only_cert=True) as srv, \
            Client(srv.port, host="127.0.0.1", ca=True, enable_ssl=True) as c:
        with mail() as m:
            r = c.send_and_wait(m)
        failed(r, asock.E_SMTP_CERTIFICATE)
        assert "name" in r["message"].lower() and "127.0.0.1" in r["message"], r["message"]
        assert "MAIL" not in srv.rec.verbs()


def test_same_certificate_is_accepted_by_its_name():
    # The control for the test above: the same server, reached as "localhost".
    with smtp_server(starttls=True, localhost_only_cert=True) as srv, \
            Client(srv.port, host="localhost", ca=True, enable_ssl=True) as c:
        with mail() as m:
            r = c.send_and_wait(m)
        assert r["error"] == asock.OK, str(r)
        assert srv.rec.messages[0]["tls"]


def test_implicit_tls_to_a_plaintext_server():
    with smtp_server() as srv, Client(srv.port, host="localhost", ca=True,
                                      security=asock.SMTP_SECURITY_IMPLICIT_TLS) as c:
        start = time.monotonic()
        with mail() as m:
            r = c.send_and_wait(m)
        failed(r, asock.E_SMTP_TLS)
        assert time.monotonic() - start < 5, "it failed by timing out"
        assert srv.rec.commands == []


# --- 9. scripted misbehaviour --------------------------------------------------------
def greet(p, caps=(b"STARTTLS",)):
    p.send(b"220 fake ESMTP\r\n")
    assert p.line().startswith("EHLO ")
    p.send(b"".join([b"250-fake\r\n"] + [b"250-" + c + b"\r\n" for c in caps[:-1]] + [b"250 " + caps[-1] + b"\r\n"]))


@pytest.mark.parametrize("injected", [b"250-injected\r\n250 AUTH PLAIN\r\n", b"2", b"\x16\x03\x03"],
                         ids=["reply", "partial-line", "tls-like"])
def test_bytes_after_the_starttls_reply_abort_the_session(injected):
    def server(p):
        greet(p)
        assert p.line() == "STARTTLS"
        # The reply and injected bytes in a single write, before any TLS.
        p.send(b"220 go ahead\r\n" + injected)
        return p.until_eof()

    with ScriptedServer(server) as fake, Trace() as tr:
        with Client(fake.port, host="localhost", enable_ssl=True) as c, mail() as m:
            r = c.send_and_wait(m, 21)
        after = fake.join()
    failed(r, asock.E_SMTP_PROTOCOL)
    assert r["user_token"] == 21
    assert after == b"", f"the client sent {after!r} after the poisoned STARTTLS reply"
    assert tr.commands()[-1] == "STARTTLS"
    assert not any(t.startswith("TLS established") for t in tr.lines())


def test_plaintext_after_starttls_is_a_tls_failure():
    def server(p):
        greet(p)
        assert p.line() == "STARTTLS"
        p.send(b"220 go ahead\r\n")
        hello = p.some()  # the client's ClientHello...
        p.send(b"250 this is not TLS\r\n")  # ...answered in plaintext
        return hello, p.until_eof()

    with ScriptedServer(server) as fake:
        with Client(fake.port, host="localhost", enable_ssl=True) as c, mail() as m:
            r = c.send_and_wait(m)
        hello, _ = fake.join()
    failed(r, asock.E_SMTP_TLS)
    assert hello[:1] == b"\x16", f"not a TLS handshake record: {hello[:16]!r}"
    assert fake.peer.lines[-1] == "STARTTLS"


def test_capabilities_before_tls_are_forgotten():
    """RFC 3207 4.2: what the server said before TLS (here a 10-byte SIZE
    limit and PIPELINING, as a man in the middle could have written them)
    counts for nothing once TLS is up: the message goes out, without SIZE=
    and one command at a time, as the post-TLS EHLO reply says."""
    from smtp_servers import Peer, pki
    ctx = pki().server_context()

    def server(p):
        greet(p, caps=(b"SIZE 10", b"PIPELINING", b"STARTTLS"))
        assert p.line() == "STARTTLS"
        p.send(b"220 go ahead\r\n")
        t = Peer(ctx.wrap_socket(p.conn, server_side=True))
        assert t.line().startswith("EHLO ")
        t.send(b"250-fake\r\n250 8BITMIME\r\n")
        mail_from = t.line()
        # Not pipelined now: nothing more arrives until MAIL is answered.
        assert t.buf == b"", t.buf
        t.send(b"250 ok\r\n")
        assert t.line().startswith("RCPT TO:")
        t.send(b"250 ok\r\n")
        assert t.line() == "DATA"
        t.send(b"354 go\r\n")
        t.until(b"\r\n.\r\n")
        t.send(b"250 queued\r\n")
        assert t.line() == "QUIT"
        t.send(b"221 bye\r\n")
        return mail_from

    with ScriptedServer(server) as fake:
        with Client(fake.port, host="localhost", ca=True, enable_ssl=True) as c, mail() as m:
            r = c.send_and_wait(m)
        mail_from = fake.join()
    assert r["error"] == asock.OK, str(r)
    assert r["status_code"] == 250
    assert mail_from == "MAIL FROM:<alice@example.com>", mail_from


def test_starttls_required_but_not_offered():
    def server(p):
        greet(p, caps=(b"8BITMIME", b"SIZE 1000000"))
        p.until_eof()

    with ScriptedServer(server) as fake:
        with Client(fake.port, enable_ssl=True) as c, mail() as m:
            r = c.send_and_wait(m, 31)
        fake.join()
    failed(r, asock.E_SMTP_STARTTLS_UNAVAILABLE)
    assert r["user_token"] == 31
    sent = fake.peer.lines
    assert sent[0].startswith("EHLO ")
    assert not any(ln.upper().startswith(("MAIL", "RCPT", "DATA", "AUTH", "STARTTLS")) for ln in sent), sent


def test_starttls_required_against_a_real_server_without_it():
    with smtp_server() as srv, Client(srv.port, enable_ssl=True) as c:
        with mail() as m:
            r = c.send_and_wait(m)
        failed(r, asock.E_SMTP_STARTTLS_UNAVAILABLE)
        verbs = srv.rec.verbs()
        assert verbs[0] == "EHLO" and not {"STARTTLS", "AUTH", "MAIL", "RCPT", "DATA"} & set(verbs), verbs


# --- connect, timeout, cancel ----------------------------------------------------------
def test_connection_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, not listening: connects are refused
        with Client(s.getsockname()[1]) as c, mail() as m:
            r = c.send_and_wait(m, 41)
    failed(r, asock.E_SMTP_CONNECT)
    assert r["socket_error"] == asock.CONNECTION_REFUSED, str(r)
    assert r["user_token"] == 41


def silent(p):
    """Accepts and never says a word; returns when the client hangs up."""
    return p.until_eof()


def test_silent_server_times_out():
    with ScriptedServer(silent) as fake:
        with Client(fake.port, timeout_ms=300) as c, mail() as m:
            start = time.monotonic()
            r = c.send_and_wait(m, 51)
            elapsed = time.monotonic() - start
        fake.join()
    failed(r, asock.E_SMTP_TIMEOUT)
    assert r["socket_error"] == asock.TIMED_OUT, str(r)
    assert r["user_token"] == 51
    assert 0.25 <= elapsed < 5, elapsed


def test_cancel_right_after_send_async():
    # A listener nobody accepts from: connects complete, no greeting ever comes.
    with socket.create_server(("127.0.0.1", 0)) as mute:
        with Client(mute.getsockname()[1]) as c, mail() as m:
            assert c.send_async(m, 62) == asock.OK
            c.cancel()
            r = c.wait()
            # Exactly one completion, and the client is free for the next send at once.
            assert c.send_async(m, 63) == asock.OK
            c.cancel()
            r2 = c.wait()
            assert c.results.empty()
    assert (r["error"], r["cancelled"], r["user_token"]) == (asock.OPERATION_ABORTED, True, 62), str(r)
    assert (r2["error"], r2["cancelled"], r2["user_token"]) == (asock.OPERATION_ABORTED, True, 63), str(r2)


def test_cancel_a_send_in_progress():
    with ScriptedServer(silent) as fake:
        with Client(fake.port) as c, mail() as m:
            assert c.send_async(m, 61) == asock.OK
            fake.wait_accepted()  # connected, waiting for a greeting
            c.cancel()
            r = c.wait()
            assert c.results.empty()
        fake.join()  # the client hung up
    assert r["error"] == asock.OPERATION_ABORTED, str(r)
    assert r["cancelled"] is True, str(r)
    assert r["user_token"] == 61, str(r)


def test_free_during_a_send_completes_it_cancelled():
    with ScriptedServer(silent) as fake:
        c = Client(fake.port)
        with mail() as m:
            assert c.send_async(m, 71) == asock.OK
        fake.wait_accepted()  # connected, waiting for a greeting
        c.free()
        r = c.wait()
        fake.join()
    assert r["error"] == asock.OPERATION_ABORTED, str(r)
    assert r["cancelled"] is True and r["user_token"] == 71, str(r)


# --- a kept connection the server dropped ------------------------------------------
def transaction(p):
    """The server's side of a plain SMTP session's first message."""
    p.send(b"220 fake ESMTP\r\n")
    assert p.line().startswith("EHLO ")
    p.send(b"250 fake\r\n")
    for reply in (b"250 OK\r\n", b"250 OK\r\n", b"354 go ahead\r\n"):
        assert p.line() is not None
        p.send(reply)
    p.until(b"\r\n.\r\n")
    p.send(b"250 2.0.0 queued\r\n")


@pytest.mark.parametrize("how", ["fin", "rst"])
@pytest.mark.parametrize("when", ["idle", "after-quit"])
def test_next_send_reconnects_when_the_server_dropped_the_connection(when, how):
    """The server drops the connection (FIN or RST) while it is idle, or
    right after the client's QUIT (idle timeout 0) without a 221. The
    client's loop is driven here (asock_loop_run_once), so that is still
    unnoticed when the next send is queued: that send must open a new
    connection, not fail."""
    drop = threading.Event()
    dropped = threading.Event()

    def server(p):
        transaction(p)
        if p.index == 0:
            if when == "after-quit":
                assert p.line() == "QUIT"
            assert drop.wait(WAIT)
            if how == "rst":
                p.conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                p.conn.close()
                dropped.set()
                return
            p.conn.shutdown(socket.SHUT_WR)
            dropped.set()
            p.until_eof()
        else:
            if p.line() == "QUIT":
                p.send(b"221 bye\r\n")
            p.until_eof()

    loop = asock.Loop()
    assert asock.asock_loop_new(ctypes.byref(loop)) == asock.OK
    with ScriptedServer(server, connections=2) as fake:
        try:
            with Client(fake.port, loop=loop, idle_timeout_ms=0 if when == "after-quit" else None) as c, \
                    mail() as m:
                assert c.send_async(m, 1) == asock.OK
                assert c.drive()["error"] == asock.OK
                drop.set()  # nobody runs the loop now: the client learns of it in the next turn
                assert dropped.wait(WAIT)
                assert c.send_async(m, 2) == asock.OK
                r = c.drive()
                assert r["error"] == asock.OK, str(r)
                assert r["user_token"] == 2
        finally:
            # Closes the client's connection (after its QUIT) for the server.
            assert asock.asock_loop_free(loop) == asock.OK
        fake.join()
    assert len(fake.peers) == 2
