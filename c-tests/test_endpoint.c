/*
 * test_endpoint.c — section 4, endpoints: asock_endpoint_parse,
 * asock_endpoint_format and asock_endpoint_init.
 */
#include "harness.h"

static const asock_endpoint SENTINEL_EP = {
    0x5A5A5A5A, 0x5A5A, {0x5A, 0x5A, 0x5A, 0x5A, 0x5A, 0x5A, 0x5A, 0x5A, 0x5A, 0x5A, 0x5A, 0x5A, 0x5A, 0x5A, 0x5A, 0x5A},
    0x5A5A5A5A, 0x5A5A5A5A};

static bool ep_equal(const asock_endpoint *a, const asock_endpoint *b) {
    if (a->family != b->family || a->port != b->port)
        return false;
    if (a->family == ASOCK_AF_INET)
        return memcmp(a->addr, b->addr, 4) == 0;
    return memcmp(a->addr, b->addr, 16) == 0 && a->flowinfo == b->flowinfo && a->scope_id == b->scope_id;
}

/* Field by field: the struct has padding that assignment need not copy. */
static bool ep_is_sentinel(const asock_endpoint *ep) {
    return ep->family == SENTINEL_EP.family && ep->port == SENTINEL_EP.port &&
           memcmp(ep->addr, SENTINEL_EP.addr, 16) == 0 && ep->flowinfo == SENTINEL_EP.flowinfo &&
           ep->scope_id == SENTINEL_EP.scope_id;
}

TEST(parse_ipv4) {
    asock_endpoint ep;
    REQUIRE_OK(asock_endpoint_parse("127.0.0.1:25", &ep));
    CHECK_EQ_INT(ep.family, ASOCK_AF_INET);
    CHECK_EQ_INT(ep.port, 25);
    CHECK_EQ_INT(ep.addr[0], 127);
    CHECK_EQ_INT(ep.addr[1], 0);
    CHECK_EQ_INT(ep.addr[2], 0);
    CHECK_EQ_INT(ep.addr[3], 1);

    /* Port in host byte order. */
    REQUIRE_OK(asock_endpoint_parse("10.20.30.40:258", &ep));
    CHECK_EQ_INT(ep.port, 258);
    CHECK_EQ_INT(ep.addr[0], 10);
    CHECK_EQ_INT(ep.addr[1], 20);
    CHECK_EQ_INT(ep.addr[2], 30);
    CHECK_EQ_INT(ep.addr[3], 40);

    REQUIRE_OK(asock_endpoint_parse("0.0.0.0:0", &ep));
    CHECK_EQ_INT(ep.port, 0);
    CHECK_EQ_INT(ep.addr[0] | ep.addr[1] | ep.addr[2] | ep.addr[3], 0);

    REQUIRE_OK(asock_endpoint_parse("255.255.255.255:65535", &ep));
    CHECK_EQ_INT(ep.port, 65535);
    CHECK_EQ_INT(ep.addr[0] & ep.addr[1] & ep.addr[2] & ep.addr[3], 255);
}

TEST(parse_ipv6) {
    asock_endpoint ep;
    REQUIRE_OK(asock_endpoint_parse("[::1]:25", &ep));
    CHECK_EQ_INT(ep.family, ASOCK_AF_INET6);
    CHECK_EQ_INT(ep.port, 25);
    for (int i = 0; i < 15; i++)
        CHECK_EQ_INT(ep.addr[i], 0);
    CHECK_EQ_INT(ep.addr[15], 1);
    CHECK_EQ_INT(ep.scope_id, 0);
    CHECK_EQ_INT(ep.flowinfo, 0);

    REQUIRE_OK(asock_endpoint_parse("[2001:db8::a:b]:443", &ep));
    CHECK_EQ_INT(ep.family, ASOCK_AF_INET6);
    CHECK_EQ_INT(ep.port, 443);
    const uint8_t want[16] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a, 0, 0x0b};
    CHECK(memcmp(ep.addr, want, 16) == 0);

    REQUIRE_OK(asock_endpoint_parse("[::]:0", &ep));
    CHECK_EQ_INT(ep.family, ASOCK_AF_INET6);
    for (int i = 0; i < 16; i++)
        CHECK_EQ_INT(ep.addr[i], 0);

    /* An IPv4-mapped address is an IPv6 endpoint. */
    REQUIRE_OK(asock_endpoint_parse("[::ffff:1.2.3.4]:80", &ep));
    CHECK_EQ_INT(ep.family, ASOCK_AF_INET6);
    CHECK_EQ_INT(ep.addr[10], 0xff);
    CHECK_EQ_INT(ep.addr[11], 0xff);
    CHECK_EQ_INT(ep.addr[12], 1);
    CHECK_EQ_INT(ep.addr[15], 4);
}

TEST(parse_ipv6_scope_id) {
    asock_endpoint ep;
    REQUIRE_OK(asock_endpoint_parse("[fe80::1%2]:25", &ep));
    CHECK_EQ_INT(ep.family, ASOCK_AF_INET6);
    CHECK_EQ_INT(ep.port, 25);
    CHECK_EQ_INT(ep.scope_id, 2);
    CHECK_EQ_INT(ep.addr[0], 0xfe);
    CHECK_EQ_INT(ep.addr[1], 0x80);
    CHECK_EQ_INT(ep.addr[15], 1);

    REQUIRE_OK(asock_endpoint_parse("[fe80::abcd%4294967295]:1", &ep));
    CHECK_EQ_INT(ep.scope_id, 4294967295u);
}

TEST(format_parse_round_trip) {
    const char *texts[] = {
        "127.0.0.1:25",  "0.0.0.0:0",        "255.255.255.255:65535", "10.1.2.3:8080",
        "[::1]:25",      "[::]:0",           "[2001:db8::a:b]:443",   "[fe80::1%2]:25",
        "[fe80::1%4294967295]:65535",        "[::ffff:1.2.3.4]:80",
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        asock_endpoint ep, back;
        char buf[ASOCK_ENDPOINT_TEXT_MAX];
        asock_error e = asock_endpoint_parse(texts[i], &ep);
        if (e != ASOCK_OK) {
            harness_fail_code(__FILE__, __LINE__, texts[i], e, ASOCK_OK);
            continue;
        }
        size_t n = asock_endpoint_format(&ep, buf, sizeof buf);
        CHECK_EQ_INT(n, strlen(texts[i]));
        if (strcmp(buf, texts[i]) != 0) {
            harness_fail_begin(__FILE__, __LINE__);
            fprintf(stderr, "format(parse(\"%s\")) = \"%s\"\n", texts[i], buf);
            harness_fail_end();
        }
        CHECK_OK(asock_endpoint_parse(buf, &back));
        CHECK(ep_equal(&ep, &back));
    }
}

TEST(format_then_parse_gives_the_same_endpoint) {
    /* From the struct side: every endpoint the library formats reads back. */
    asock_endpoint eps[4];
    CHECK_OK(asock_endpoint_init(ASOCK_AF_INET, true, 1, &eps[0]));
    CHECK_OK(asock_endpoint_init(ASOCK_AF_INET, false, 65535, &eps[1]));
    CHECK_OK(asock_endpoint_init(ASOCK_AF_INET6, true, 80, &eps[2]));
    CHECK_OK(asock_endpoint_init(ASOCK_AF_INET6, false, 0, &eps[3]));
    for (int i = 0; i < 4; i++) {
        char buf[ASOCK_ENDPOINT_TEXT_MAX];
        asock_endpoint back;
        CHECK(asock_endpoint_format(&eps[i], buf, sizeof buf) > 0);
        CHECK_OK(asock_endpoint_parse(buf, &back));
        CHECK(ep_equal(&eps[i], &back));
    }
}

TEST(format_longest_endpoint_fits_text_max) {
    const char *longest = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535";
    asock_endpoint ep;
    REQUIRE_OK(asock_endpoint_parse(longest, &ep));
    char buf[ASOCK_ENDPOINT_TEXT_MAX];
    size_t n = asock_endpoint_format(&ep, buf, sizeof buf);
    CHECK_EQ_INT(n, strlen(longest));
    CHECK(n <= ASOCK_ENDPOINT_TEXT_MAX - 1);
    CHECK(strcmp(buf, longest) == 0);
}

TEST(format_ipv4_ignores_the_unused_bytes) {
    asock_endpoint ep;
    memset(&ep, 0xEE, sizeof ep);
    ep.family = ASOCK_AF_INET;
    ep.port = 5;
    ep.addr[0] = 1;
    ep.addr[1] = 2;
    ep.addr[2] = 3;
    ep.addr[3] = 4;
    char buf[ASOCK_ENDPOINT_TEXT_MAX];
    CHECK_EQ_INT(asock_endpoint_format(&ep, buf, sizeof buf), strlen("1.2.3.4:5"));
    CHECK(strcmp(buf, "1.2.3.4:5") == 0);
}

TEST(parse_rejects_malformed_text) {
    const char *bad[] = {
        "",                 /* empty */
        "127.0.0.1",        /* no port */
        "[::1]",            /* no port */
        "::1",              /* no port, no brackets */
        "::1:25",           /* IPv6 without brackets */
        "fe80::1%2:25",     /* IPv6 without brackets */
        "127.0.0.1:65536",  /* port too big */
        "[::1]:65536",      /* port too big */
        "127.0.0.1:99999999999",
        "127.0.0.1:-1",     /* negative port */
        "[::1]:-1",
        "localhost:25",     /* host names are not endpoints */
        "example.com:80",
        "[localhost]:25",
        "127.0.0.1:25x",    /* trailing garbage */
        "127.0.0.1:25 ",
        "[::1]:25x",
        "[::1]:25]",
        "127.0.0.1:25:26",
        " 127.0.0.1:25",    /* leading garbage */
        "x127.0.0.1:25",
        "127.0.0.1:",       /* empty port */
        "[::1]:",
        ":25",              /* no address */
        "[]:25",
        "1.2.3:25",         /* short IPv4 */
        "1.2.3.4.5:25",
        "256.1.1.1:1",      /* octet too big */
        "[::1:25",          /* unbalanced brackets */
        "::1]:25",
        "[127.0.0.1]:25",   /* IPv4 in brackets */
        "[::1]25",
        "[::g]:25",
        "127.0.0.1:0x19",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        asock_endpoint ep = SENTINEL_EP;
        asock_error e = asock_endpoint_parse(bad[i], &ep);
        if (e != ASOCK_E_FORMAT) {
            harness_fail_begin(__FILE__, __LINE__);
            fprintf(stderr, "asock_endpoint_parse(\"%s\") = %d %s, want Format\n", bad[i], (int)e,
                    asock_error_name(e));
            harness_fail_end();
        }
        /* *out is written only on success. */
        CHECK(ep_is_sentinel(&ep));
        /* The failure left a detail. */
        CHECK(asock_error_message(NULL, 0) > 0);
    }
}

TEST(parse_null_arguments) {
    asock_endpoint ep = SENTINEL_EP;
    CHECK_ERR(asock_endpoint_parse(NULL, &ep), ASOCK_E_ARGUMENT_NULL);
    CHECK(ep_is_sentinel(&ep));
    CHECK_ERR(asock_endpoint_parse("127.0.0.1:25", NULL), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_endpoint_parse(NULL, NULL), ASOCK_E_ARGUMENT_NULL);
    CHECK(asock_error_message(NULL, 0) > 0);
}

TEST(format_truncation_semantics) {
    asock_endpoint ep;
    REQUIRE_OK(asock_endpoint_parse("127.0.0.1:25", &ep));
    const char *full = "127.0.0.1:25";
    size_t n = strlen(full);
    char buf[32];

    /* Room for everything. */
    memset(buf, 'Z', sizeof buf);
    CHECK_EQ_INT(asock_endpoint_format(&ep, buf, sizeof buf), n);
    CHECK(strcmp(buf, full) == 0);

    /* Exactly n + 1: everything; exactly n: one byte short, NUL-terminated. */
    memset(buf, 'Z', sizeof buf);
    CHECK_EQ_INT(asock_endpoint_format(&ep, buf, n + 1), n);
    CHECK(strcmp(buf, full) == 0);
    memset(buf, 'Z', sizeof buf);
    CHECK_EQ_INT(asock_endpoint_format(&ep, buf, n), n);
    CHECK_EQ_INT(strlen(buf), n - 1);
    CHECK(strncmp(buf, full, n - 1) == 0);
    CHECK_EQ_INT(buf[n], 'Z');

    /* len 5: four bytes and a NUL, the full length returned. */
    memset(buf, 'Z', sizeof buf);
    CHECK_EQ_INT(asock_endpoint_format(&ep, buf, 5), n);
    CHECK(strcmp(buf, "127.") == 0);
    CHECK_EQ_INT(buf[5], 'Z');

    /* len 1: only the NUL. */
    memset(buf, 'Z', sizeof buf);
    CHECK_EQ_INT(asock_endpoint_format(&ep, buf, 1), n);
    CHECK_EQ_INT(buf[0], '\0');
    CHECK_EQ_INT(buf[1], 'Z');

    /* len 0: nothing written at all; NULL buffer: the length to allocate. */
    memset(buf, 'Z', sizeof buf);
    CHECK_EQ_INT(asock_endpoint_format(&ep, buf, 0), n);
    CHECK_EQ_INT(buf[0], 'Z');
    CHECK_EQ_INT(asock_endpoint_format(&ep, NULL, 0), n);

    /* IPv6 too. */
    REQUIRE_OK(asock_endpoint_parse("[::1]:25", &ep));
    memset(buf, 'Z', sizeof buf);
    CHECK_EQ_INT(asock_endpoint_format(&ep, buf, 4), strlen("[::1]:25"));
    CHECK(strcmp(buf, "[::") == 0);
}

TEST(format_bad_family_returns_0_and_sets_message) {
    const int32_t families[] = {0, 1, 10, 99, -1};
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++) {
        /* Start from a different, known detail so a change is visible. */
        CHECK_ERR(asock_endpoint_parse(NULL, NULL), ASOCK_E_ARGUMENT_NULL);
        char before[512], after[512];
        asock_error_message(before, sizeof before);

        asock_endpoint ep;
        memset(&ep, 0, sizeof ep);
        ep.family = families[i];
        ep.port = 25;
        char buf[ASOCK_ENDPOINT_TEXT_MAX];
        CHECK_EQ_INT(asock_endpoint_format(&ep, buf, sizeof buf), 0);
        CHECK(asock_error_message(after, sizeof after) > 0);
        CHECK(strcmp(before, after) != 0);
    }
    /* NULL endpoint: 0 and a message as well. */
    char before[512], after[512];
    CHECK_ERR(asock_endpoint_parse(NULL, NULL), ASOCK_E_ARGUMENT_NULL);
    asock_error_message(before, sizeof before);
    char buf[ASOCK_ENDPOINT_TEXT_MAX];
    CHECK_EQ_INT(asock_endpoint_format(NULL, buf, sizeof buf), 0);
    CHECK(asock_error_message(after, sizeof after) > 0);
    CHECK(strcmp(before, after) != 0);
}

TEST(init_both_families) {
    asock_endpoint ep;
    char buf[ASOCK_ENDPOINT_TEXT_MAX];

    REQUIRE_OK(asock_endpoint_init(ASOCK_AF_INET, true, 8080, &ep));
    CHECK_EQ_INT(ep.family, ASOCK_AF_INET);
    CHECK_EQ_INT(ep.port, 8080);
    CHECK(ep.addr[0] == 127 && ep.addr[1] == 0 && ep.addr[2] == 0 && ep.addr[3] == 1);
    asock_endpoint_format(&ep, buf, sizeof buf);
    CHECK(strcmp(buf, "127.0.0.1:8080") == 0);

    REQUIRE_OK(asock_endpoint_init(ASOCK_AF_INET, false, 0, &ep));
    CHECK_EQ_INT(ep.family, ASOCK_AF_INET);
    CHECK_EQ_INT(ep.port, 0);
    CHECK_EQ_INT(ep.addr[0] | ep.addr[1] | ep.addr[2] | ep.addr[3], 0);
    asock_endpoint_format(&ep, buf, sizeof buf);
    CHECK(strcmp(buf, "0.0.0.0:0") == 0);

    REQUIRE_OK(asock_endpoint_init(ASOCK_AF_INET6, true, 65535, &ep));
    CHECK_EQ_INT(ep.family, ASOCK_AF_INET6);
    CHECK_EQ_INT(ep.port, 65535);
    for (int i = 0; i < 15; i++)
        CHECK_EQ_INT(ep.addr[i], 0);
    CHECK_EQ_INT(ep.addr[15], 1);
    CHECK_EQ_INT(ep.flowinfo, 0);
    CHECK_EQ_INT(ep.scope_id, 0);
    asock_endpoint_format(&ep, buf, sizeof buf);
    CHECK(strcmp(buf, "[::1]:65535") == 0);

    REQUIRE_OK(asock_endpoint_init(ASOCK_AF_INET6, false, 1, &ep));
    CHECK_EQ_INT(ep.family, ASOCK_AF_INET6);
    CHECK_EQ_INT(ep.port, 1);
    for (int i = 0; i < 16; i++)
        CHECK_EQ_INT(ep.addr[i], 0);
    asock_endpoint_format(&ep, buf, sizeof buf);
    CHECK(strcmp(buf, "[::]:1") == 0);
}

TEST(init_bad_family_and_null_out) {
    const int32_t families[] = {0, 1, 3, 10, 22, 24, 99, -1, -23};
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++) {
        for (int loopback = 0; loopback < 2; loopback++) {
            asock_endpoint ep = SENTINEL_EP;
            asock_error e = asock_endpoint_init(families[i], loopback != 0, 25, &ep);
            if (e != ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED) {
                harness_fail_begin(__FILE__, __LINE__);
                fprintf(stderr, "asock_endpoint_init(%d, %d) = %d %s, want AddressFamilyNotSupported\n",
                        (int)families[i], loopback, (int)e, asock_error_name(e));
                harness_fail_end();
            }
            CHECK(ep_is_sentinel(&ep));
        }
    }
    CHECK_ERR(asock_endpoint_init(ASOCK_AF_INET, true, 1, NULL), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_endpoint_init(ASOCK_AF_INET6, false, 1, NULL), ASOCK_E_ARGUMENT_NULL);
}

#define EP_THREADS 4
#define EP_ROUNDS 2000

static void *endpoint_worker(void *arg) {
    int *bad = arg;
    char text[64], buf[ASOCK_ENDPOINT_TEXT_MAX];
    for (int i = 0; i < EP_ROUNDS; i++) {
        asock_endpoint ep;
        if (i % 2)
            snprintf(text, sizeof text, "10.%d.%d.%d:%d", i % 256, (i / 256) % 256, i % 7, i);
        else
            snprintf(text, sizeof text, "[2001:db8::%x]:%d", i + 1, i);
        if (asock_endpoint_parse(text, &ep) != ASOCK_OK) {
            (*bad)++;
            continue;
        }
        if (asock_endpoint_format(&ep, buf, sizeof buf) != strlen(text) || strcmp(buf, text) != 0)
            (*bad)++;
        if (asock_endpoint_parse("nope", &ep) != ASOCK_E_FORMAT)
            (*bad)++;
    }
    return NULL;
}

TEST(parse_and_format_from_several_threads) {
    pthread_t t[EP_THREADS];
    int bad[EP_THREADS] = {0};
    for (int i = 0; i < EP_THREADS; i++)
        REQUIRE(pthread_create(&t[i], NULL, endpoint_worker, &bad[i]) == 0);
    for (int i = 0; i < EP_THREADS; i++) {
        pthread_join(t[i], NULL);
        CHECK_EQ_INT(bad[i], 0);
    }
}

int main(void) {
    RUN(parse_ipv4);
    RUN(parse_ipv6);
    RUN(parse_ipv6_scope_id);
    RUN(format_parse_round_trip);
    RUN(format_then_parse_gives_the_same_endpoint);
    RUN(format_longest_endpoint_fits_text_max);
    RUN(format_ipv4_ignores_the_unused_bytes);
    RUN(parse_rejects_malformed_text);
    RUN(parse_null_arguments);
    RUN(format_truncation_semantics);
    RUN(format_bad_family_returns_0_and_sets_message);
    RUN(init_both_families);
    RUN(init_bad_family_and_null_out);
    RUN(parse_and_format_from_several_threads);
    return harness_finish();
}
