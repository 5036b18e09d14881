/*
 * test_socket.c — section 4, sockets: creation, bind, listen, endpoints,
 * options, shutdown, close, and what freeing a loop does to its sockets.
 */
#include "harness.h"

#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <sys/socket.h>

static const asock_socket SENTINEL_SOCKET = {0x5A5A5A5A5A5A5A5Aull};

static asock_endpoint loopback(int32_t family, uint16_t port) {
    asock_endpoint ep;
    memset(&ep, 0, sizeof ep);
    asock_error e = asock_endpoint_init(family, true, port, &ep);
    if (e != ASOCK_OK)
        harness_fail_code(__FILE__, __LINE__, "asock_endpoint_init", e, ASOCK_OK);
    return ep;
}

/* A POSIX TCP client connected to 127.0.0.1:port (blocking), or -1. */
static int posix_connect_v4(uint16_t port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    return fd;
}

/* ---- creation ---------------------------------------------------------------- */

TEST(socket_new_every_valid_kind_on_default_and_own_loop) {
    asock_loop own;
    REQUIRE_OK(asock_loop_new(&own));
    const asock_loop loops[2] = {{0}, own};
    const int32_t families[2] = {ASOCK_AF_INET, ASOCK_AF_INET6};
    const int32_t kinds[4][2] = {
        {ASOCK_SOCK_STREAM, ASOCK_PROTO_UNSPECIFIED},
        {ASOCK_SOCK_STREAM, ASOCK_PROTO_TCP},
        {ASOCK_SOCK_DGRAM, ASOCK_PROTO_UNSPECIFIED},
        {ASOCK_SOCK_DGRAM, ASOCK_PROTO_UDP},
    };
    asock_socket made[16];
    int n = 0;
    for (int li = 0; li < 2; li++)
        for (int fi = 0; fi < 2; fi++)
            for (int ki = 0; ki < 4; ki++) {
                asock_socket s = SENTINEL_SOCKET;
                asock_error e = asock_socket_new(loops[li], families[fi], kinds[ki][0], kinds[ki][1], &s);
                if (e != ASOCK_OK) {
                    harness_fail_code(__FILE__, __LINE__, "asock_socket_new(valid kind)", e, ASOCK_OK);
                    continue;
                }
                CHECK(s.id != 0);
                CHECK(s.id != SENTINEL_SOCKET.id);
                /* It is usable: an option reads back. */
                int32_t v = -1;
                CHECK_OK(asock_socket_get_option(s, ASOCK_OPT_REUSE_ADDRESS, &v));
                CHECK_EQ_INT(v, 0);
                made[n++] = s;
            }
    CHECK_EQ_INT(n, 16);
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            CHECK(made[i].id != made[j].id);
    for (int i = 0; i < n; i++)
        CHECK_OK(asock_socket_close(made[i]));
    CHECK_OK(asock_loop_free(own));
}

TEST(socket_new_bad_values) {
    asock_socket s = SENTINEL_SOCKET;
    const int32_t bad_families[] = {0, 1, 3, 10, 22, 24, 99, -1, INT_MIN};
    for (size_t i = 0; i < sizeof bad_families / sizeof bad_families[0]; i++) {
        CHECK_ERR(asock_socket_new((asock_loop){0}, bad_families[i], ASOCK_SOCK_STREAM, ASOCK_PROTO_TCP, &s),
                  ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED);
        CHECK_ERR(asock_socket_new((asock_loop){0}, bad_families[i], ASOCK_SOCK_DGRAM, 0, &s),
                  ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED);
    }
    const int32_t bad_types[] = {0, 3, 4, 5, -1, 99, INT_MAX};
    for (size_t i = 0; i < sizeof bad_types / sizeof bad_types[0]; i++) {
        CHECK_ERR(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, bad_types[i], 0, &s),
                  ASOCK_SOCKET_NOT_SUPPORTED);
        CHECK_ERR(asock_socket_new((asock_loop){0}, ASOCK_AF_INET6, bad_types[i], 0, &s),
                  ASOCK_SOCKET_NOT_SUPPORTED);
    }
    const int32_t bad_protocols[] = {99, 1, 2, 41, 255, -1, INT_MIN};
    for (size_t i = 0; i < sizeof bad_protocols / sizeof bad_protocols[0]; i++) {
        CHECK_ERR(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_STREAM, bad_protocols[i], &s),
                  ASOCK_PROTOCOL_NOT_SUPPORTED);
        CHECK_ERR(asock_socket_new((asock_loop){0}, ASOCK_AF_INET6, ASOCK_SOCK_DGRAM, bad_protocols[i], &s),
                  ASOCK_PROTOCOL_NOT_SUPPORTED);
    }
    /* A protocol that does not fit the type. */
    CHECK_ERR(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_STREAM, ASOCK_PROTO_UDP, &s),
              ASOCK_PROTOCOL_NOT_SUPPORTED);
    CHECK_ERR(asock_socket_new((asock_loop){0}, ASOCK_AF_INET6, ASOCK_SOCK_STREAM, ASOCK_PROTO_UDP, &s),
              ASOCK_PROTOCOL_NOT_SUPPORTED);
    CHECK_ERR(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_DGRAM, ASOCK_PROTO_TCP, &s),
              ASOCK_PROTOCOL_NOT_SUPPORTED);
    CHECK_ERR(asock_socket_new((asock_loop){0}, ASOCK_AF_INET6, ASOCK_SOCK_DGRAM, ASOCK_PROTO_TCP, &s),
              ASOCK_PROTOCOL_NOT_SUPPORTED);
    /* *out is written only on success. */
    CHECK(s.id == SENTINEL_SOCKET.id);
    CHECK_ERR(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_STREAM, ASOCK_PROTO_TCP, NULL),
              ASOCK_E_ARGUMENT_NULL);
}

TEST(socket_new_on_stale_or_forged_loop) {
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    asock_socket live;
    REQUIRE_OK(asock_socket_new(l, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &live));
    asock_socket s = SENTINEL_SOCKET;
    /* A socket's id is not a loop. */
    CHECK_ERR(asock_socket_new((asock_loop){live.id}, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &s), ASOCK_E_ARGUMENT);
    CHECK_OK(asock_socket_close(live));
    CHECK_OK(asock_loop_free(l));
    CHECK_ERR(asock_socket_new(l, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &s), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_socket_new(l, ASOCK_AF_INET6, ASOCK_SOCK_DGRAM, ASOCK_PROTO_UDP, &s), ASOCK_E_OBJECT_DISPOSED);
    CHECK(s.id == SENTINEL_SOCKET.id);
}

/* ---- bind -------------------------------------------------------------------------- */

static void bind_and_read_back(int32_t family, int32_t type) {
    asock_socket s;
    REQUIRE_OK(asock_socket_new((asock_loop){0}, family, type, 0, &s));
    asock_endpoint ep = loopback(family, 0);
    CHECK_OK(asock_socket_bind(s, &ep));
    asock_endpoint got;
    memset(&got, 0, sizeof got);
    CHECK_OK(asock_socket_local_endpoint(s, &got));
    CHECK_EQ_INT(got.family, family);
    CHECK(got.port != 0);
    if (family == ASOCK_AF_INET) {
        CHECK(got.addr[0] == 127 && got.addr[1] == 0 && got.addr[2] == 0 && got.addr[3] == 1);
    } else {
        for (int i = 0; i < 15; i++)
            CHECK_EQ_INT(got.addr[i], 0);
        CHECK_EQ_INT(got.addr[15], 1);
    }
    /* The same again: stable. */
    asock_endpoint again;
    CHECK_OK(asock_socket_local_endpoint(s, &again));
    CHECK_EQ_INT(again.port, got.port);
    CHECK_OK(asock_socket_close(s));
}

TEST(bind_loopback_port_0_and_read_the_port_back) {
    bind_and_read_back(ASOCK_AF_INET, ASOCK_SOCK_STREAM);
    bind_and_read_back(ASOCK_AF_INET6, ASOCK_SOCK_STREAM);
    bind_and_read_back(ASOCK_AF_INET, ASOCK_SOCK_DGRAM);
    bind_and_read_back(ASOCK_AF_INET6, ASOCK_SOCK_DGRAM);
}

TEST(bind_bad_endpoints) {
    asock_socket v4, v6;
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &v4));
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET6, ASOCK_SOCK_DGRAM, 0, &v6));

    CHECK_ERR(asock_socket_bind(v4, NULL), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_socket_bind(v6, NULL), ASOCK_E_ARGUMENT_NULL);

    asock_endpoint ep6 = loopback(ASOCK_AF_INET6, 0), ep4 = loopback(ASOCK_AF_INET, 0);
    CHECK_ERR(asock_socket_bind(v4, &ep6), ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED);
    CHECK_ERR(asock_socket_bind(v6, &ep4), ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED);

    const int32_t bad_families[] = {0, 1, 10, 99, -1};
    for (size_t i = 0; i < sizeof bad_families / sizeof bad_families[0]; i++) {
        asock_endpoint bad = ep4;
        bad.family = bad_families[i];
        CHECK_ERR(asock_socket_bind(v4, &bad), ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED);
        CHECK_ERR(asock_socket_bind(v6, &bad), ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED);
    }
    /* None of that bound anything. */
    asock_endpoint got;
    CHECK_ERR(asock_socket_local_endpoint(v4, &got), ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(asock_socket_local_endpoint(v6, &got), ASOCK_E_INVALID_OPERATION);
    /* And the sockets still bind fine. */
    CHECK_OK(asock_socket_bind(v4, &ep4));
    CHECK_OK(asock_socket_bind(v6, &ep6));
    CHECK_OK(asock_socket_close(v4));
    CHECK_OK(asock_socket_close(v6));
}

static void address_in_use(int32_t family, int32_t type) {
    asock_socket a, b;
    REQUIRE_OK(asock_socket_new((asock_loop){0}, family, type, 0, &a));
    REQUIRE_OK(asock_socket_new((asock_loop){0}, family, type, 0, &b));
    asock_endpoint ep = loopback(family, 0);
    CHECK_OK(asock_socket_bind(a, &ep));
    asock_endpoint taken;
    CHECK_OK(asock_socket_local_endpoint(a, &taken));
    CHECK(taken.port != 0);
    CHECK_ERR(asock_socket_bind(b, &taken), ASOCK_ADDRESS_ALREADY_IN_USE);
    /* b is still unbound and usable. */
    CHECK_OK(asock_socket_bind(b, &ep));
    CHECK_OK(asock_socket_close(a));
    CHECK_OK(asock_socket_close(b));
}

TEST(bind_address_already_in_use) {
    address_in_use(ASOCK_AF_INET, ASOCK_SOCK_STREAM);
    address_in_use(ASOCK_AF_INET6, ASOCK_SOCK_STREAM);
    address_in_use(ASOCK_AF_INET, ASOCK_SOCK_DGRAM);
    address_in_use(ASOCK_AF_INET6, ASOCK_SOCK_DGRAM);
}

TEST(bind_twice_and_after_close) {
    asock_socket s;
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &s));
    asock_endpoint ep = loopback(ASOCK_AF_INET, 0);
    CHECK_OK(asock_socket_bind(s, &ep));
    CHECK_ERR(asock_socket_bind(s, &ep), ASOCK_INVALID_ARGUMENT);
    CHECK_OK(asock_socket_close(s));
    CHECK_ERR(asock_socket_bind(s, &ep), ASOCK_E_OBJECT_DISPOSED);

    asock_socket u;
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET6, ASOCK_SOCK_DGRAM, 0, &u));
    asock_endpoint ep6 = loopback(ASOCK_AF_INET6, 0);
    CHECK_OK(asock_socket_bind(u, &ep6));
    CHECK_ERR(asock_socket_bind(u, &ep6), ASOCK_INVALID_ARGUMENT);
    CHECK_OK(asock_socket_close(u));
    CHECK_ERR(asock_socket_bind(u, &ep6), ASOCK_E_OBJECT_DISPOSED);
}

/* ---- listen ------------------------------------------------------------------------ */

TEST(listen_backlog_and_kinds) {
    asock_socket s;
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &s));
    asock_endpoint ep = loopback(ASOCK_AF_INET, 0);
    CHECK_OK(asock_socket_bind(s, &ep));
    CHECK_ERR(asock_socket_listen(s, -1), ASOCK_E_ARGUMENT_OUT_OF_RANGE);
    CHECK_ERR(asock_socket_listen(s, INT_MIN), ASOCK_E_ARGUMENT_OUT_OF_RANGE);
    CHECK_OK(asock_socket_listen(s, 16));
    /* It really listens: a POSIX client connects. */
    asock_endpoint local;
    CHECK_OK(asock_socket_local_endpoint(s, &local));
    int fd = posix_connect_v4(local.port);
    CHECK(fd >= 0);
    if (fd >= 0)
        close(fd);
    CHECK_OK(asock_socket_close(s));
    CHECK_ERR(asock_socket_listen(s, 16), ASOCK_E_OBJECT_DISPOSED);

    /* backlog 0 is a valid backlog. */
    asock_socket z;
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET6, ASOCK_SOCK_STREAM, ASOCK_PROTO_TCP, &z));
    asock_endpoint ep6 = loopback(ASOCK_AF_INET6, 0);
    CHECK_OK(asock_socket_bind(z, &ep6));
    CHECK_OK(asock_socket_listen(z, 0));
    CHECK_OK(asock_socket_close(z));

    /* Datagram sockets do not listen. */
    for (int f = 0; f < 2; f++) {
        int32_t family = f ? ASOCK_AF_INET6 : ASOCK_AF_INET;
        asock_socket u;
        REQUIRE_OK(asock_socket_new((asock_loop){0}, family, ASOCK_SOCK_DGRAM, ASOCK_PROTO_UDP, &u));
        asock_endpoint uep = loopback(family, 0);
        CHECK_ERR(asock_socket_listen(u, 5), ASOCK_OPERATION_NOT_SUPPORTED);
        CHECK_OK(asock_socket_bind(u, &uep));
        CHECK_ERR(asock_socket_listen(u, 5), ASOCK_OPERATION_NOT_SUPPORTED);
        CHECK_OK(asock_socket_close(u));
    }
}

/* ---- endpoints ------------------------------------------------------------------------ */

TEST(local_endpoint_before_bind_and_bad_arguments) {
    for (int f = 0; f < 2; f++)
        for (int k = 0; k < 2; k++) {
            int32_t family = f ? ASOCK_AF_INET6 : ASOCK_AF_INET;
            int32_t type = k ? ASOCK_SOCK_DGRAM : ASOCK_SOCK_STREAM;
            asock_socket s;
            REQUIRE_OK(asock_socket_new((asock_loop){0}, family, type, 0, &s));
            asock_endpoint ep;
            memset(&ep, 0xAB, sizeof ep);
            CHECK_ERR(asock_socket_local_endpoint(s, &ep), ASOCK_E_INVALID_OPERATION);
            CHECK_EQ_INT(ep.port, 0xABAB); /* not written */
            CHECK_ERR(asock_socket_local_endpoint(s, NULL), ASOCK_E_ARGUMENT_NULL);
            CHECK_OK(asock_socket_close(s));
            CHECK_ERR(asock_socket_local_endpoint(s, &ep), ASOCK_E_OBJECT_DISPOSED);
        }
}

TEST(remote_endpoint_not_connected) {
    asock_socket l;
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &l));
    asock_endpoint ep;
    memset(&ep, 0xAB, sizeof ep);
    CHECK_ERR(asock_socket_remote_endpoint(l, &ep), ASOCK_NOT_CONNECTED);
    asock_endpoint any = loopback(ASOCK_AF_INET, 0);
    CHECK_OK(asock_socket_bind(l, &any));
    CHECK_ERR(asock_socket_remote_endpoint(l, &ep), ASOCK_NOT_CONNECTED);
    CHECK_OK(asock_socket_listen(l, 4));
    asock_endpoint local;
    CHECK_OK(asock_socket_local_endpoint(l, &local));
    /* A POSIX client connects (the kernel completes it from the backlog):
     * the listener itself still has no peer. */
    int fd = posix_connect_v4(local.port);
    CHECK(fd >= 0);
    CHECK_ERR(asock_socket_remote_endpoint(l, &ep), ASOCK_NOT_CONNECTED);
    CHECK_EQ_INT(ep.port, 0xABAB); /* not written */
    if (fd >= 0)
        close(fd);
    CHECK_ERR(asock_socket_remote_endpoint(l, NULL), ASOCK_E_ARGUMENT_NULL);
    CHECK_OK(asock_socket_close(l));
    CHECK_ERR(asock_socket_remote_endpoint(l, &ep), ASOCK_E_OBJECT_DISPOSED);

    /* Unconnected UDP, IPv6. */
    asock_socket u;
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET6, ASOCK_SOCK_DGRAM, 0, &u));
    CHECK_ERR(asock_socket_remote_endpoint(u, &ep), ASOCK_NOT_CONNECTED);
    CHECK_OK(asock_socket_close(u));
}

/* ---- options ------------------------------------------------------------------------------ */

static void round_trip(asock_socket s, int32_t opt, int32_t value, const char *what) {
    asock_error e = asock_socket_set_option(s, opt, value);
    if (e != ASOCK_OK) {
        harness_fail_code(__FILE__, __LINE__, what, e, ASOCK_OK);
        return;
    }
    int32_t got = INT_MIN + 7;
    e = asock_socket_get_option(s, opt, &got);
    if (e != ASOCK_OK) {
        harness_fail_code(__FILE__, __LINE__, what, e, ASOCK_OK);
        return;
    }
    if (got != value) {
        harness_fail_begin(__FILE__, __LINE__);
        fprintf(stderr, "%s: set %d, got %d\n", what, (int)value, (int)got);
        harness_fail_end();
    }
}

#define ROUND_TRIP(s, opt, v) round_trip((s), (opt), (v), #opt " = " #v " on " #s)

static int32_t get_opt(asock_socket s, int32_t opt) {
    int32_t v = INT_MIN + 7;
    asock_error e = asock_socket_get_option(s, opt, &v);
    if (e != ASOCK_OK)
        harness_fail_code(__FILE__, __LINE__, "asock_socket_get_option", e, ASOCK_OK);
    return v;
}

TEST(options_round_trip_tcp) {
    for (int f = 0; f < 2; f++) {
        int32_t family = f ? ASOCK_AF_INET6 : ASOCK_AF_INET;
        asock_socket tcp;
        REQUIRE_OK(asock_socket_new((asock_loop){0}, family, ASOCK_SOCK_STREAM, ASOCK_PROTO_TCP, &tcp));
        const int32_t bools[] = {ASOCK_OPT_NO_DELAY, ASOCK_OPT_REUSE_ADDRESS, ASOCK_OPT_REUSE_PORT,
                                 ASOCK_OPT_KEEP_ALIVE};
        for (size_t i = 0; i < sizeof bools / sizeof bools[0]; i++) {
            CHECK_EQ_INT(get_opt(tcp, bools[i]), 0); /* off by default */
            round_trip(tcp, bools[i], 1, "boolean option = 1");
            round_trip(tcp, bools[i], 0, "boolean option = 0");
            round_trip(tcp, bools[i], 1, "boolean option = 1 again");
        }
        CHECK_EQ_INT(get_opt(tcp, ASOCK_OPT_LINGER_SECONDS), -1); /* off by default */
        ROUND_TRIP(tcp, ASOCK_OPT_LINGER_SECONDS, 0);
        ROUND_TRIP(tcp, ASOCK_OPT_LINGER_SECONDS, 7);
        ROUND_TRIP(tcp, ASOCK_OPT_LINGER_SECONDS, 65535);
        ROUND_TRIP(tcp, ASOCK_OPT_LINGER_SECONDS, -1);

        CHECK(get_opt(tcp, ASOCK_OPT_SEND_BUFFER_SIZE) > 0);
        CHECK(get_opt(tcp, ASOCK_OPT_RECEIVE_BUFFER_SIZE) > 0);
        CHECK_OK(asock_socket_set_option(tcp, ASOCK_OPT_SEND_BUFFER_SIZE, 65536));
        CHECK(get_opt(tcp, ASOCK_OPT_SEND_BUFFER_SIZE) >= 65536);
        CHECK_OK(asock_socket_set_option(tcp, ASOCK_OPT_RECEIVE_BUFFER_SIZE, 98304));
        CHECK(get_opt(tcp, ASOCK_OPT_RECEIVE_BUFFER_SIZE) >= 98304);

        ROUND_TRIP(tcp, ASOCK_OPT_TTL, 1);
        ROUND_TRIP(tcp, ASOCK_OPT_TTL, 33);
        ROUND_TRIP(tcp, ASOCK_OPT_TTL, 255);

        CHECK_EQ_INT(get_opt(tcp, ASOCK_OPT_ACCEPT_RECEIVE_TIMEOUT_MS), 30000);
        ROUND_TRIP(tcp, ASOCK_OPT_ACCEPT_RECEIVE_TIMEOUT_MS, -1);
        ROUND_TRIP(tcp, ASOCK_OPT_ACCEPT_RECEIVE_TIMEOUT_MS, 1);
        ROUND_TRIP(tcp, ASOCK_OPT_ACCEPT_RECEIVE_TIMEOUT_MS, 1500);
        ROUND_TRIP(tcp, ASOCK_OPT_ACCEPT_RECEIVE_TIMEOUT_MS, INT_MAX);

        if (family == ASOCK_AF_INET6) {
            ROUND_TRIP(tcp, ASOCK_OPT_IPV6_ONLY, 1);
            ROUND_TRIP(tcp, ASOCK_OPT_IPV6_ONLY, 0);
        }
        CHECK_OK(asock_socket_close(tcp));
    }
}

TEST(options_round_trip_udp) {
    for (int f = 0; f < 2; f++) {
        int32_t family = f ? ASOCK_AF_INET6 : ASOCK_AF_INET;
        asock_socket udp;
        REQUIRE_OK(asock_socket_new((asock_loop){0}, family, ASOCK_SOCK_DGRAM, ASOCK_PROTO_UDP, &udp));
        CHECK_EQ_INT(get_opt(udp, ASOCK_OPT_BROADCAST), 0);
        ROUND_TRIP(udp, ASOCK_OPT_BROADCAST, 1);
        ROUND_TRIP(udp, ASOCK_OPT_BROADCAST, 0);
        ROUND_TRIP(udp, ASOCK_OPT_REUSE_ADDRESS, 1);
        ROUND_TRIP(udp, ASOCK_OPT_REUSE_PORT, 1);
        ROUND_TRIP(udp, ASOCK_OPT_TTL, 7);
        ROUND_TRIP(udp, ASOCK_OPT_TTL, 200);
        CHECK_OK(asock_socket_set_option(udp, ASOCK_OPT_SEND_BUFFER_SIZE, 32768));
        CHECK(get_opt(udp, ASOCK_OPT_SEND_BUFFER_SIZE) >= 32768);
        CHECK_OK(asock_socket_set_option(udp, ASOCK_OPT_RECEIVE_BUFFER_SIZE, 32768));
        CHECK(get_opt(udp, ASOCK_OPT_RECEIVE_BUFFER_SIZE) >= 32768);
        if (family == ASOCK_AF_INET6) {
            ROUND_TRIP(udp, ASOCK_OPT_IPV6_ONLY, 1);
            ROUND_TRIP(udp, ASOCK_OPT_IPV6_ONLY, 0);
        }
        CHECK_OK(asock_socket_close(udp));
    }
}

TEST(ipv6_only_really_applies) {
    /* IPV6_ONLY = 1: an IPv6 socket bound to [::]:P leaves 0.0.0.0:P free;
     * the option is set on the real descriptor, not just remembered. */
    asock_socket v6, v4;
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET6, ASOCK_SOCK_DGRAM, 0, &v6));
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_DGRAM, 0, &v4));
    CHECK_OK(asock_socket_set_option(v6, ASOCK_OPT_IPV6_ONLY, 1));
    asock_endpoint any6;
    CHECK_OK(asock_endpoint_init(ASOCK_AF_INET6, false, 0, &any6));
    CHECK_OK(asock_socket_bind(v6, &any6));
    asock_endpoint bound;
    CHECK_OK(asock_socket_local_endpoint(v6, &bound));
    asock_endpoint any4;
    CHECK_OK(asock_endpoint_init(ASOCK_AF_INET, false, bound.port, &any4));
    CHECK_OK(asock_socket_bind(v4, &any4));
    CHECK_OK(asock_socket_close(v6));
    CHECK_OK(asock_socket_close(v4));
}

struct range_case {
    int32_t opt;
    int32_t value;
    const char *what;
};

static void check_out_of_range(asock_socket s, const struct range_case *c, size_t n) {
    for (size_t i = 0; i < n; i++) {
        int32_t before = get_opt(s, c[i].opt);
        asock_error e = asock_socket_set_option(s, c[i].opt, c[i].value);
        if (e != ASOCK_E_ARGUMENT_OUT_OF_RANGE) {
            harness_fail_begin(__FILE__, __LINE__);
            fprintf(stderr, "set_option(%s, %d) = %d %s, want ArgumentOutOfRange\n", c[i].what, (int)c[i].value,
                    (int)e, asock_error_name(e));
            harness_fail_end();
        }
        /* A refused value changes nothing. */
        int32_t after = get_opt(s, c[i].opt);
        if (e != ASOCK_OK && before != after) {
            harness_fail_begin(__FILE__, __LINE__);
            fprintf(stderr, "set_option(%s, %d) was refused but changed the value %d -> %d\n", c[i].what,
                    (int)c[i].value, (int)before, (int)after);
            harness_fail_end();
        }
    }
}

TEST(option_values_out_of_range) {
    asock_socket tcp;
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET6, ASOCK_SOCK_STREAM, 0, &tcp));
    CHECK_OK(asock_socket_set_option(tcp, ASOCK_OPT_LINGER_SECONDS, 5));
    CHECK_OK(asock_socket_set_option(tcp, ASOCK_OPT_TTL, 42));
    CHECK_OK(asock_socket_set_option(tcp, ASOCK_OPT_ACCEPT_RECEIVE_TIMEOUT_MS, 1234));
    const struct range_case cases[] = {
        {ASOCK_OPT_LINGER_SECONDS, -2, "LINGER_SECONDS"},
        {ASOCK_OPT_LINGER_SECONDS, 65536, "LINGER_SECONDS"},
        {ASOCK_OPT_LINGER_SECONDS, INT_MIN, "LINGER_SECONDS"},
        {ASOCK_OPT_LINGER_SECONDS, INT_MAX, "LINGER_SECONDS"},
        {ASOCK_OPT_SEND_BUFFER_SIZE, -1, "SEND_BUFFER_SIZE"},
        {ASOCK_OPT_SEND_BUFFER_SIZE, INT_MIN, "SEND_BUFFER_SIZE"},
        {ASOCK_OPT_RECEIVE_BUFFER_SIZE, -1, "RECEIVE_BUFFER_SIZE"},
        {ASOCK_OPT_RECEIVE_BUFFER_SIZE, INT_MIN, "RECEIVE_BUFFER_SIZE"},
        {ASOCK_OPT_TTL, 0, "TTL"},
        {ASOCK_OPT_TTL, 256, "TTL"},
        {ASOCK_OPT_TTL, -1, "TTL"},
        {ASOCK_OPT_TTL, INT_MAX, "TTL"},
        {ASOCK_OPT_ACCEPT_RECEIVE_TIMEOUT_MS, -2, "ACCEPT_RECEIVE_TIMEOUT_MS"},
        {ASOCK_OPT_ACCEPT_RECEIVE_TIMEOUT_MS, INT_MIN, "ACCEPT_RECEIVE_TIMEOUT_MS"},
    };
    check_out_of_range(tcp, cases, sizeof cases / sizeof cases[0]);
    CHECK_EQ_INT(get_opt(tcp, ASOCK_OPT_LINGER_SECONDS), 5);
    CHECK_EQ_INT(get_opt(tcp, ASOCK_OPT_TTL), 42);
    CHECK_EQ_INT(get_opt(tcp, ASOCK_OPT_ACCEPT_RECEIVE_TIMEOUT_MS), 1234);
    CHECK_OK(asock_socket_close(tcp));

    asock_socket udp;
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_DGRAM, 0, &udp));
    const struct range_case ucases[] = {
        {ASOCK_OPT_TTL, 0, "TTL"},
        {ASOCK_OPT_TTL, 256, "TTL"},
        {ASOCK_OPT_SEND_BUFFER_SIZE, -100, "SEND_BUFFER_SIZE"},
    };
    check_out_of_range(udp, ucases, sizeof ucases / sizeof ucases[0]);
    CHECK_OK(asock_socket_close(udp));
}

TEST(boolean_options_accept_only_0_and_1) {
    /* The header documents every boolean option as "0 or 1"; anything else is
     * out of the option's range. */
    asock_socket tcp, udp;
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET6, ASOCK_SOCK_STREAM, 0, &tcp));
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET6, ASOCK_SOCK_DGRAM, 0, &udp));
    const struct range_case tcases[] = {
        {ASOCK_OPT_NO_DELAY, 2, "NO_DELAY"},         {ASOCK_OPT_NO_DELAY, -1, "NO_DELAY"},
        {ASOCK_OPT_REUSE_ADDRESS, 2, "REUSE_ADDRESS"}, {ASOCK_OPT_REUSE_ADDRESS, -1, "REUSE_ADDRESS"},
        {ASOCK_OPT_REUSE_PORT, 2, "REUSE_PORT"},     {ASOCK_OPT_KEEP_ALIVE, INT_MAX, "KEEP_ALIVE"},
        {ASOCK_OPT_KEEP_ALIVE, INT_MIN, "KEEP_ALIVE"}, {ASOCK_OPT_IPV6_ONLY, 2, "IPV6_ONLY"},
    };
    check_out_of_range(tcp, tcases, sizeof tcases / sizeof tcases[0]);
    const struct range_case ucases[] = {
        {ASOCK_OPT_BROADCAST, 2, "BROADCAST"},
        {ASOCK_OPT_BROADCAST, -1, "BROADCAST"},
    };
    check_out_of_range(udp, ucases, sizeof ucases / sizeof ucases[0]);
    CHECK_OK(asock_socket_close(tcp));
    CHECK_OK(asock_socket_close(udp));
}

TEST(unknown_options) {
    asock_socket s;
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &s));
    const int32_t unknown[] = {0, 12, -5, 13, 100, INT_MAX, INT_MIN};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        int32_t v = 777;
        CHECK_ERR(asock_socket_set_option(s, unknown[i], 1), ASOCK_E_ARGUMENT);
        CHECK_ERR(asock_socket_set_option(s, unknown[i], 0), ASOCK_E_ARGUMENT);
        CHECK_ERR(asock_socket_get_option(s, unknown[i], &v), ASOCK_E_ARGUMENT);
        CHECK_EQ_INT(v, 777);
    }
    CHECK_OK(asock_socket_close(s));
}

TEST(options_that_do_not_apply) {
    for (int f = 0; f < 2; f++) {
        int32_t family = f ? ASOCK_AF_INET6 : ASOCK_AF_INET;
        asock_socket udp;
        REQUIRE_OK(asock_socket_new((asock_loop){0}, family, ASOCK_SOCK_DGRAM, 0, &udp));
        int32_t v = 777;
        CHECK_ERR(asock_socket_set_option(udp, ASOCK_OPT_NO_DELAY, 1), ASOCK_PROTOCOL_OPTION);
        CHECK_ERR(asock_socket_set_option(udp, ASOCK_OPT_NO_DELAY, 0), ASOCK_PROTOCOL_OPTION);
        CHECK_ERR(asock_socket_get_option(udp, ASOCK_OPT_NO_DELAY, &v), ASOCK_PROTOCOL_OPTION);
        CHECK_EQ_INT(v, 777);
        CHECK_OK(asock_socket_close(udp));
    }
    for (int k = 0; k < 2; k++) {
        asock_socket v4;
        REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, k ? ASOCK_SOCK_DGRAM : ASOCK_SOCK_STREAM, 0, &v4));
        int32_t v = 777;
        CHECK_ERR(asock_socket_set_option(v4, ASOCK_OPT_IPV6_ONLY, 1), ASOCK_PROTOCOL_OPTION);
        CHECK_ERR(asock_socket_set_option(v4, ASOCK_OPT_IPV6_ONLY, 0), ASOCK_PROTOCOL_OPTION);
        CHECK_ERR(asock_socket_get_option(v4, ASOCK_OPT_IPV6_ONLY, &v), ASOCK_PROTOCOL_OPTION);
        CHECK_EQ_INT(v, 777);
        CHECK_OK(asock_socket_close(v4));
    }
}

TEST(get_option_null_out_and_closed_socket) {
    asock_socket s;
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &s));
    for (int32_t opt = ASOCK_OPT_NO_DELAY; opt <= ASOCK_OPT_ACCEPT_RECEIVE_TIMEOUT_MS; opt++)
        CHECK_ERR(asock_socket_get_option(s, opt, NULL), ASOCK_E_ARGUMENT_NULL);
    CHECK_OK(asock_socket_close(s));
    int32_t v = 777;
    CHECK_ERR(asock_socket_set_option(s, ASOCK_OPT_KEEP_ALIVE, 1), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_socket_get_option(s, ASOCK_OPT_KEEP_ALIVE, &v), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_socket_set_option(s, ASOCK_OPT_ACCEPT_RECEIVE_TIMEOUT_MS, 5), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_socket_get_option(s, ASOCK_OPT_ACCEPT_RECEIVE_TIMEOUT_MS, &v), ASOCK_E_OBJECT_DISPOSED);
    CHECK_EQ_INT(v, 777);
}

/* ---- shutdown --------------------------------------------------------------------------- */

TEST(shutdown_unconnected_bad_how_and_closed) {
    asock_socket tcp, udp;
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &tcp));
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET6, ASOCK_SOCK_DGRAM, 0, &udp));
    const int32_t hows[] = {ASOCK_SHUTDOWN_RECEIVE, ASOCK_SHUTDOWN_SEND, ASOCK_SHUTDOWN_BOTH};
    for (int i = 0; i < 3; i++) {
        CHECK_ERR(asock_socket_shutdown(tcp, hows[i]), ASOCK_NOT_CONNECTED);
        CHECK_ERR(asock_socket_shutdown(udp, hows[i]), ASOCK_NOT_CONNECTED);
    }
    const int32_t bad[] = {3, -1, 4, 100, INT_MIN};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_ERR(asock_socket_shutdown(tcp, bad[i]), ASOCK_E_ARGUMENT);
        CHECK_ERR(asock_socket_shutdown(udp, bad[i]), ASOCK_E_ARGUMENT);
    }
    /* Bound but not connected is still not connected. */
    asock_endpoint ep = loopback(ASOCK_AF_INET, 0);
    CHECK_OK(asock_socket_bind(tcp, &ep));
    CHECK_ERR(asock_socket_shutdown(tcp, ASOCK_SHUTDOWN_BOTH), ASOCK_NOT_CONNECTED);
    CHECK_OK(asock_socket_close(tcp));
    CHECK_OK(asock_socket_close(udp));
    for (int i = 0; i < 3; i++) {
        CHECK_ERR(asock_socket_shutdown(tcp, hows[i]), ASOCK_E_OBJECT_DISPOSED);
        CHECK_ERR(asock_socket_shutdown(udp, hows[i]), ASOCK_E_OBJECT_DISPOSED);
    }
}

/* ---- close ---------------------------------------------------------------------------- */

static void check_all_disposed(asock_socket s) {
    asock_endpoint ep = loopback(ASOCK_AF_INET, 0), out;
    int32_t v = 777;
    CHECK_ERR(asock_socket_bind(s, &ep), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_socket_listen(s, 1), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_socket_local_endpoint(s, &out), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_socket_remote_endpoint(s, &out), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_socket_set_option(s, ASOCK_OPT_REUSE_ADDRESS, 1), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_socket_get_option(s, ASOCK_OPT_REUSE_ADDRESS, &v), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_socket_shutdown(s, ASOCK_SHUTDOWN_BOTH), ASOCK_E_OBJECT_DISPOSED);
    CHECK_EQ_INT(v, 777);
}

TEST(close_twice_and_every_call_after_close) {
    asock_socket s;
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &s));
    CHECK_OK(asock_socket_close(s));
    CHECK_ERR(asock_socket_close(s), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_socket_close(s), ASOCK_E_OBJECT_DISPOSED);
    check_all_disposed(s);
    /* A new socket (possibly in the same slot) is not reachable through s. */
    asock_socket t;
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &t));
    CHECK(t.id != s.id);
    check_all_disposed(s);
    CHECK_OK(asock_socket_set_option(t, ASOCK_OPT_KEEP_ALIVE, 1));
    CHECK_EQ_INT(get_opt(t, ASOCK_OPT_KEEP_ALIVE), 1);
    CHECK_OK(asock_socket_close(t));
}

TEST(close_releases_the_port) {
    asock_socket s;
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &s));
    asock_endpoint ep = loopback(ASOCK_AF_INET, 0), local;
    CHECK_OK(asock_socket_bind(s, &ep));
    CHECK_OK(asock_socket_listen(s, 4));
    CHECK_OK(asock_socket_local_endpoint(s, &local));
    CHECK_OK(asock_socket_close(s));
    /* Nobody listens there any more. */
    int fd = posix_connect_v4(local.port);
    CHECK(fd < 0);
    CHECK_EQ_INT(fd < 0 ? errno : 0, ECONNREFUSED);
    if (fd >= 0)
        close(fd);
}

TEST(freeing_the_loop_closes_its_sockets) {
    int fds_before = count_open_fds();
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    int fds_with_loop = count_open_fds();
    asock_socket listener, udp, plain;
    REQUIRE_OK(asock_socket_new(l, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &listener));
    REQUIRE_OK(asock_socket_new(l, ASOCK_AF_INET6, ASOCK_SOCK_DGRAM, 0, &udp));
    REQUIRE_OK(asock_socket_new(l, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &plain));
    CHECK_EQ_INT(count_open_fds(), fds_with_loop + 3);
    asock_endpoint ep = loopback(ASOCK_AF_INET, 0), local;
    CHECK_OK(asock_socket_bind(listener, &ep));
    CHECK_OK(asock_socket_listen(listener, 4));
    CHECK_OK(asock_socket_local_endpoint(listener, &local));
    asock_endpoint ep6 = loopback(ASOCK_AF_INET6, 0);
    CHECK_OK(asock_socket_bind(udp, &ep6));
    /* One closed by the user before the loop is freed. */
    CHECK_OK(asock_socket_close(plain));

    CHECK_OK(asock_loop_free(l));

    /* The sockets' descriptors are closed: nobody listens any more. */
    int fd = posix_connect_v4(local.port);
    CHECK(fd < 0);
    if (fd >= 0)
        close(fd);
    CHECK(count_open_fds() <= fds_with_loop);

    check_all_disposed(listener);
    check_all_disposed(udp);
    /* Closing the handles still succeeds once, then reports disposed. */
    CHECK_OK(asock_socket_close(listener));
    CHECK_ERR(asock_socket_close(listener), ASOCK_E_OBJECT_DISPOSED);
    CHECK_OK(asock_socket_close(udp));
    CHECK_ERR(asock_socket_close(udp), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_socket_close(plain), ASOCK_E_OBJECT_DISPOSED);
    /* With the handles closed, nothing of the loop is left either. */
    CHECK_EQ_INT(count_open_fds(), fds_before);
}

TEST(socket_on_a_library_thread_loop_freed) {
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    REQUIRE_OK(asock_loop_start_thread(l));
    asock_socket s;
    REQUIRE_OK(asock_socket_new(l, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &s));
    asock_endpoint ep = loopback(ASOCK_AF_INET, 0);
    CHECK_OK(asock_socket_bind(s, &ep));
    CHECK_OK(asock_loop_free(l));
    check_all_disposed(s);
    CHECK_OK(asock_socket_close(s));
    CHECK_ERR(asock_socket_close(s), ASOCK_E_OBJECT_DISPOSED);
}

/* Sockets created while another thread frees their loop: each creation is
 * either refused (ObjectDisposed) or the socket is closed by the free like
 * every other socket on the loop — none stays open on a freed loop. */
#define CREATORS 3
#define CREATE_MAX 400

struct creator {
    asock_loop l;
    pthread_barrier_t *go;
    atomic_int *made_total;
    atomic_int *stop;
    asock_socket made[CREATE_MAX];
    int n;
    int wrong;
};

static void *creator_main(void *arg) {
    struct creator *c = arg;
    pthread_barrier_wait(c->go);
    while (c->n < CREATE_MAX && !atomic_load(c->stop)) {
        asock_error e = asock_socket_new(c->l, ASOCK_AF_INET, ASOCK_SOCK_DGRAM, 0, &c->made[c->n]);
        if (e != ASOCK_OK) {
            if (e != ASOCK_E_OBJECT_DISPOSED)
                c->wrong++;
            break;
        }
        c->n++;
        atomic_fetch_add(c->made_total, 1);
    }
    return NULL;
}

TEST(socket_new_racing_loop_free) {
    int rounds = under_valgrind() ? 20 : 100;
    int still_open = 0;
    for (int round = 0; round < rounds; round++) {
        asock_loop l;
        REQUIRE_OK(asock_loop_new(&l));
        pthread_barrier_t go;
        pthread_barrier_init(&go, NULL, CREATORS + 1);
        atomic_int made_total = 0, stop = 0;
        struct creator *c = calloc(CREATORS, sizeof *c);
        REQUIRE(c != NULL);
        pthread_t t[CREATORS];
        for (int i = 0; i < CREATORS; i++) {
            c[i].l = l;
            c[i].go = &go;
            c[i].made_total = &made_total;
            c[i].stop = &stop;
            if (pthread_create(&t[i], NULL, creator_main, &c[i]) != 0) {
                harness_fail_cond(__FILE__, __LINE__, "pthread_create");
                exit(1);
            }
        }
        pthread_barrier_wait(&go);
        CHECK(wait_atomic_ge(&made_total, 1 + round % 30, 10000));
        CHECK_OK(asock_loop_free(l));
        atomic_store(&stop, 1);
        for (int i = 0; i < CREATORS; i++) {
            pthread_join(t[i], NULL);
            CHECK_EQ_INT(c[i].wrong, 0);
            for (int k = 0; k < c[i].n; k++) {
                int32_t v = 777;
                asock_error e = asock_socket_get_option(c[i].made[k], ASOCK_OPT_BROADCAST, &v);
                if (e != ASOCK_E_OBJECT_DISPOSED)
                    still_open++;
                CHECK_OK(asock_socket_close(c[i].made[k]));
            }
        }
        pthread_barrier_destroy(&go);
        free(c);
    }
    CHECK_EQ_INT(still_open, 0);
}

TEST(many_sockets_do_not_leak_descriptors) {
    asock_loop own;
    REQUIRE_OK(asock_loop_new(&own));
    /* Make sure the default loop exists before counting. */
    asock_socket warm;
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_DGRAM, 0, &warm));
    CHECK_OK(asock_socket_close(warm));

    int before = count_open_fds();
    REQUIRE(before > 0);
    enum { N = 1000 };
    for (int i = 0; i < N; i++) {
        asock_socket s;
        asock_loop l = (i % 2) ? own : (asock_loop){0};
        int32_t family = (i % 4) < 2 ? ASOCK_AF_INET : ASOCK_AF_INET6;
        int32_t type = (i % 3) ? ASOCK_SOCK_STREAM : ASOCK_SOCK_DGRAM;
        asock_error e = asock_socket_new(l, family, type, 0, &s);
        if (e != ASOCK_OK) {
            harness_fail_code(__FILE__, __LINE__, "asock_socket_new", e, ASOCK_OK);
            break;
        }
        if (i % 5 == 0) {
            asock_endpoint ep = loopback(family, 0);
            CHECK_OK(asock_socket_bind(s, &ep));
        }
        CHECK_OK(asock_socket_close(s));
    }
    CHECK_EQ_INT(count_open_fds(), before);

    /* Held all at once, then closed. */
    asock_socket *held = calloc(N, sizeof *held);
    REQUIRE(held != NULL);
    int made = 0;
    for (int i = 0; i < N; i++) {
        if (asock_socket_new(own, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &held[i]) != ASOCK_OK)
            break;
        made++;
    }
    CHECK_EQ_INT(made, N);
    CHECK_EQ_INT(count_open_fds(), before + made);
    for (int i = 0; i < made; i++)
        CHECK_OK(asock_socket_close(held[i]));
    CHECK_EQ_INT(count_open_fds(), before);

    /* Held all at once, then closed by freeing their loop. */
    asock_loop l2;
    REQUIRE_OK(asock_loop_new(&l2));
    made = 0;
    for (int i = 0; i < N / 2; i++) {
        if (asock_socket_new(l2, ASOCK_AF_INET6, ASOCK_SOCK_DGRAM, 0, &held[i]) != ASOCK_OK)
            break;
        made++;
    }
    CHECK_EQ_INT(made, N / 2);
    CHECK_OK(asock_loop_free(l2));
    CHECK(count_open_fds() < before + made);
    for (int i = 0; i < made; i++)
        CHECK_OK(asock_socket_close(held[i]));
    CHECK_EQ_INT(count_open_fds(), before);
    free(held);
    CHECK_OK(asock_loop_free(own));
    CHECK(count_open_fds() < before);
}

int main(void) {
    RUN(socket_new_every_valid_kind_on_default_and_own_loop);
    RUN(socket_new_bad_values);
    RUN(socket_new_on_stale_or_forged_loop);
    RUN(bind_loopback_port_0_and_read_the_port_back);
    RUN(bind_bad_endpoints);
    RUN(bind_address_already_in_use);
    RUN(bind_twice_and_after_close);
    RUN(listen_backlog_and_kinds);
    RUN(local_endpoint_before_bind_and_bad_arguments);
    RUN(remote_endpoint_not_connected);
    RUN(options_round_trip_tcp);
    RUN(options_round_trip_udp);
    RUN(ipv6_only_really_applies);
    RUN(option_values_out_of_range);
    RUN(boolean_options_accept_only_0_and_1);
    RUN(unknown_options);
    RUN(options_that_do_not_apply);
    RUN(get_option_null_out_and_closed_socket);
    RUN(shutdown_unconnected_bad_how_and_closed);
    RUN(close_twice_and_every_call_after_close);
    RUN(close_releases_the_port);
    RUN(freeing_the_loop_closes_its_sockets);
    RUN(socket_on_a_library_thread_loop_freed);
    RUN(socket_new_racing_loop_free);
    RUN(many_sockets_do_not_leak_descriptors);
    return harness_finish();
}
