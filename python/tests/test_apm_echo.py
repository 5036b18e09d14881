"""Begin/End from Python: an echo server whose receive → send → receive chain
runs entirely in ctypes callbacks on the default loop's thread, and a client
driven with blocking End calls from the test thread."""

import ctypes
import threading

import asock

TIMEOUT = 10


def new_socket(family=asock.AF_INET):
    s = asock.Socket()
    asock.check(asock.asock_socket_new(asock.DEFAULT_LOOP, family, asock.SOCK_STREAM, asock.PROTO_TCP,
                                       ctypes.byref(s)), "socket_new")
    return s


class EchoServer:
    """Accepts one connection and echoes until the peer shuts down."""

    def __init__(self):
        self.listener = new_socket()
        ep = asock.parse_endpoint("127.0.0.1:0")
        asock.check(asock.asock_socket_bind(self.listener, ctypes.byref(ep)), "bind")
        asock.check(asock.asock_socket_listen(self.listener, 8), "listen")
        self.endpoint = asock.Endpoint()
        asock.check(asock.asock_socket_local_endpoint(self.listener, ctypes.byref(self.endpoint)), "local")
        self.buf = ctypes.create_string_buffer(4096)
        self.conn = asock.Socket()
        self.echoed = 0
        self.callback_threads = set()
        self.finished = threading.Event()
        self.errors = []
        # The ctypes callbacks must outlive every operation that may call them.
        self.on_accept = asock.ASYNC_CB(self._on_accept)
        self.on_received = asock.ASYNC_CB(self._on_received)
        self.on_sent = asock.ASYNC_CB(self._on_sent)
        ar = asock.AsyncResult()
        asock.check(asock.asock_begin_accept(self.listener, self.on_accept, None, ctypes.byref(ar)), "begin_accept")

    def _fail(self, what, code):
        self.errors.append((what, asock.error_name(code)))
        self.finished.set()

    def _receive(self):
        ar = asock.AsyncResult()
        rc = asock.asock_begin_receive(self.conn, self.buf, len(self.buf), 0, self.on_received, None, ctypes.byref(ar))
        if rc != asock.OK:
            self._fail("begin_receive", rc)

    def _on_accept(self, ar, state):
        self.callback_threads.add(threading.get_ident())
        rc = asock.asock_end_accept(ar, ctypes.byref(self.conn))
        if rc != asock.OK:
            return self._fail("end_accept", rc)
        self._receive()

    def _on_received(self, ar, state):
        self.callback_threads.add(threading.get_ident())
        err = ctypes.c_int32()
        n = asock.asock_end_receive(ar, ctypes.byref(err))
        if n < 0:
            return self._fail("end_receive", err.value)
        if n == 0:
            return self.finished.set()
        w = asock.AsyncResult()
        rc = asock.asock_begin_send(self.conn, self.buf, n, 0, self.on_sent, None, ctypes.byref(w))
        if rc != asock.OK:
            self._fail("begin_send", rc)

    def _on_sent(self, ar, state):
        err = ctypes.c_int32()
        n = asock.asock_end_send(ar, ctypes.byref(err))
        if n < 0:
            return self._fail("end_send", err.value)
        self.echoed += n
        self._receive()

    def close(self):
        for s in (self.conn, self.listener):
            if s.id:
                asock.asock_socket_close(s)


def blocking_end(fn, ar):
    err = ctypes.c_int32()
    n = fn(ar, ctypes.byref(err))
    assert n >= 0, asock.error_name(err.value)
    assert err.value == asock.OK
    return n


def test_echo_round_trips_through_begin_end():
    server = EchoServer()
    client = new_socket()
    try:
        ar = asock.AsyncResult()
        port = server.endpoint.port
        asock.check(asock.asock_begin_connect_host(client, b"localhost", port, asock.ASYNC_CB(), None,
                                                   ctypes.byref(ar)), "begin_connect_host")
        asock.check(asock.asock_end_connect(ar), "end_connect")
        inbuf = ctypes.create_string_buffer(4096)
        total = 0
        for i in range(200):
            message = f"message {i} ".encode() * (1 + i % 7)
            out = ctypes.create_string_buffer(message, len(message))
            w = asock.AsyncResult()
            asock.check(asock.asock_begin_send(client, out, len(message), 0, asock.ASYNC_CB(), None, ctypes.byref(w)),
                        "begin_send")
            assert blocking_end(asock.asock_end_send, w) == len(message)
            got = b""
            while len(got) < len(message):
                r = asock.AsyncResult()
                asock.check(asock.asock_begin_receive(client, inbuf, len(inbuf), 0, asock.ASYNC_CB(), None,
                                                      ctypes.byref(r)), "begin_receive")
                n = blocking_end(asock.asock_end_receive, r)
                assert n > 0
                got += inbuf.raw[:n]
            assert got == message
            total += len(message)
        # Ending twice is refused: the result was freed by the first End.
        err = ctypes.c_int32()
        assert asock.asock_end_send(w, ctypes.byref(err)) == -1
        assert err.value == asock.E_INVALID_OPERATION
        # Orderly shutdown: the server's pending receive completes with 0.
        asock.check(asock.asock_socket_shutdown(client, 1), "shutdown")
        assert server.finished.wait(TIMEOUT), "the server did not see the shutdown"
        assert server.errors == []
        assert server.echoed == total
        assert threading.get_ident() not in server.callback_threads
    finally:
        asock.asock_socket_close(client)
        server.close()


def test_async_state_and_wait():
    server = EchoServer()
    client = new_socket()
    try:
        ar = asock.AsyncResult()
        marker = ctypes.c_void_p(0xBEEF)
        asock.check(asock.asock_begin_connect(client, ctypes.byref(server.endpoint), asock.ASYNC_CB(), marker,
                                              ctypes.byref(ar)), "begin_connect")
        assert asock.asock_async_result_state(ar) == 0xBEEF
        done = ctypes.c_bool()
        asock.check(asock.asock_async_result_wait(ar, TIMEOUT * 1000, ctypes.byref(done)), "wait")
        assert done.value and asock.asock_async_result_is_completed(ar)
        asock.check(asock.asock_end_connect(ar), "end_connect")
        assert asock.asock_async_result_state(ar) is None
    finally:
        asock.asock_socket_close(client)
        server.close()
