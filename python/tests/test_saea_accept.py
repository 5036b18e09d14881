"""SocketAsyncEventArgs from Python: an AcceptEx-style accept with a receive
buffer completes on the client's first data, through a ctypes Completed
callback, with the data at the buffer's offset and both addresses in the
reserved tail."""

import ctypes
import socket
import threading

import asock

TIMEOUT = 10


def listener():
    s = asock.Socket()
    asock.check(asock.asock_socket_new(asock.DEFAULT_LOOP, asock.AF_INET, asock.SOCK_STREAM, asock.PROTO_TCP,
                                       ctypes.byref(s)), "socket_new")
    ep = asock.parse_endpoint("127.0.0.1:0")
    asock.check(asock.asock_socket_bind(s, ctypes.byref(ep)), "bind")
    asock.check(asock.asock_socket_listen(s, 8), "listen")
    bound = asock.Endpoint()
    asock.check(asock.asock_socket_local_endpoint(s, ctypes.byref(bound)), "local_endpoint")
    return s, bound.port


def test_accept_with_initial_data_round_trip():
    lsock, port = listener()
    e = asock.EventArgs()
    asock.check(asock.asock_event_args_new(ctypes.byref(e)), "event_args_new")
    offset, count = 16, 512 + asock.ACCEPT_ADDRESS_BYTES
    buf = ctypes.create_string_buffer(b"\xee" * (offset + count + 16), offset + count + 16)
    done = threading.Event()
    seen = {}

    @asock.COMPLETED_CB
    def on_completed(sender, args, token):
        info = asock.EventArgsInfo()
        asock.check(asock.asock_event_args_get_info(args, ctypes.byref(info)), "get_info")
        seen.update(error=info.socket_error, bytes=info.bytes_transferred, op=info.last_operation,
                    token=token, sock=info.accept_socket.id, thread=threading.get_ident(), sender=sender.id)
        done.set()

    accepted = asock.Socket()
    client = None
    try:
        asock.check(asock.asock_event_args_set_completed(e, on_completed), "set_completed")
        asock.check(asock.asock_event_args_set_user_token(e, ctypes.c_void_p(77)), "set_user_token")
        asock.check(asock.asock_event_args_set_buffer(e, buf, offset, count), "set_buffer")
        pending = ctypes.c_bool()
        asock.check(asock.asock_accept_async(lsock, e, ctypes.byref(pending)), "accept_async")
        assert pending.value, "nothing has connected yet"

        client = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        # Connected but silent: the accept waits for the first data.
        assert not done.wait(0.2)
        client.sendall(b"first words")
        assert done.wait(TIMEOUT), "the accept did not complete on the first data"

        assert seen["error"] == asock.OK
        assert seen["op"] == asock.OP_ACCEPT
        assert seen["token"] == 77
        assert seen["sender"] == lsock.id
        assert seen["thread"] != threading.get_ident()
        n = seen["bytes"]
        assert 0 < n <= count - asock.ACCEPT_ADDRESS_BYTES
        assert buf.raw[offset:offset + n] == b"first words"[:n]
        assert buf.raw[:offset] == b"\xee" * offset, "bytes before the offset were touched"

        local, remote = asock.Endpoint(), asock.Endpoint()
        asock.check(asock.asock_event_args_get_accept_endpoints(e, ctypes.byref(local), ctypes.byref(remote)),
                    "get_accept_endpoints")
        assert asock.format_endpoint(local) == f"127.0.0.1:{port}"
        assert asock.format_endpoint(remote) == "%s:%d" % client.getsockname()
        # The reserved tail holds them as sockaddr_in: family, port (network order).
        tail = buf.raw[offset + count - asock.ACCEPT_ADDRESS_BYTES: offset + count]
        assert int.from_bytes(tail[0:2], "little") == socket.AF_INET
        assert int.from_bytes(tail[2:4], "big") == port
        assert int.from_bytes(tail[146:148], "big") == client.getsockname()[1]

        # The accepted socket works: echo the rest through plain Begin/End.
        accepted.id = seen["sock"]
        assert accepted.id != 0
        out = ctypes.create_string_buffer(b"reply", 5)
        w = asock.AsyncResult()
        asock.check(asock.asock_begin_send(accepted, out, 5, 0, asock.ASYNC_CB(), None, ctypes.byref(w)), "send")
        err = ctypes.c_int32()
        assert asock.asock_end_send(w, ctypes.byref(err)) == 5
        assert client.recv(16) == b"reply"
    finally:
        if client:
            client.close()
        if accepted.id:
            asock.asock_socket_close(accepted)
        asock.asock_socket_close(lsock)
        asock.check(asock.asock_event_args_free(e), "event_args_free")


def test_silent_connection_is_reset_after_the_receive_timeout():
    lsock, port = listener()
    asock.check(asock.asock_socket_set_option(lsock, asock.OPT_ACCEPT_RECEIVE_TIMEOUT_MS, 150), "set_option")
    e = asock.EventArgs()
    asock.check(asock.asock_event_args_new(ctypes.byref(e)), "event_args_new")
    buf = ctypes.create_string_buffer(1024)
    done = threading.Event()

    @asock.COMPLETED_CB
    def on_completed(sender, args, token):
        done.set()

    client = None
    try:
        asock.check(asock.asock_event_args_set_completed(e, on_completed), "set_completed")
        asock.check(asock.asock_event_args_set_buffer(e, buf, 0, 1024), "set_buffer")
        pending = ctypes.c_bool()
        asock.check(asock.asock_accept_async(lsock, e, ctypes.byref(pending)), "accept_async")
        client = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        assert done.wait(TIMEOUT)
        info = asock.EventArgsInfo()
        asock.check(asock.asock_event_args_get_info(e, ctypes.byref(info)), "get_info")
        assert info.socket_error == asock.CONNECTION_RESET
        assert info.accept_socket.id == 0
        try:
            got = client.recv(1)
        except ConnectionResetError:
            got = None
        assert got is None, "the half-open connection should have been reset"
    finally:
        if client:
            client.close()
        asock.asock_socket_close(lsock)
        asock.asock_event_args_free(e)
