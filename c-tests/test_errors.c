/*
 * test_errors.c — section 2 of the contract: error names, this thread's
 * last message, the version, and the errno mapping.
 */
#include "harness.h"

#include <limits.h>

struct code_name {
    asock_error code;
    const char *name;
};

/* Every code of the header. The SocketError values carry their exact .NET
 * SocketError names; the library codes carry the .NET exception class
 * names without "Exception". The SMTP codes have no .NET enum of their own
 * (name: NULL): they only have to be distinct, known names. */
static const struct code_name ALL_CODES[] = {
    {ASOCK_OK, "Success"},
    {ASOCK_SOCKET_ERROR, "SocketError"},
    {ASOCK_OPERATION_ABORTED, "OperationAborted"},
    {ASOCK_IO_PENDING, "IOPending"},
    {ASOCK_INTERRUPTED, "Interrupted"},
    {ASOCK_ACCESS_DENIED, "AccessDenied"},
    {ASOCK_FAULT, "Fault"},
    {ASOCK_INVALID_ARGUMENT, "InvalidArgument"},
    {ASOCK_TOO_MANY_OPEN_SOCKETS, "TooManyOpenSockets"},
    {ASOCK_WOULD_BLOCK, "WouldBlock"},
    {ASOCK_IN_PROGRESS, "InProgress"},
    {ASOCK_ALREADY_IN_PROGRESS, "AlreadyInProgress"},
    {ASOCK_NOT_SOCKET, "NotSocket"},
    {ASOCK_DESTINATION_ADDRESS_REQUIRED, "DestinationAddressRequired"},
    {ASOCK_MESSAGE_SIZE, "MessageSize"},
    {ASOCK_PROTOCOL_TYPE, "ProtocolType"},
    {ASOCK_PROTOCOL_OPTION, "ProtocolOption"},
    {ASOCK_PROTOCOL_NOT_SUPPORTED, "ProtocolNotSupported"},
    {ASOCK_SOCKET_NOT_SUPPORTED, "SocketNotSupported"},
    {ASOCK_OPERATION_NOT_SUPPORTED, "OperationNotSupported"},
    {ASOCK_PROTOCOL_FAMILY_NOT_SUPPORTED, "ProtocolFamilyNotSupported"},
    {ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED, "AddressFamilyNotSupported"},
    {ASOCK_ADDRESS_ALREADY_IN_USE, "AddressAlreadyInUse"},
    {ASOCK_ADDRESS_NOT_AVAILABLE, "AddressNotAvailable"},
    {ASOCK_NETWORK_DOWN, "NetworkDown"},
    {ASOCK_NETWORK_UNREACHABLE, "NetworkUnreachable"},
    {ASOCK_NETWORK_RESET, "NetworkReset"},
    {ASOCK_CONNECTION_ABORTED, "ConnectionAborted"},
    {ASOCK_CONNECTION_RESET, "ConnectionReset"},
    {ASOCK_NO_BUFFER_SPACE_AVAILABLE, "NoBufferSpaceAvailable"},
    {ASOCK_IS_CONNECTED, "IsConnected"},
    {ASOCK_NOT_CONNECTED, "NotConnected"},
    {ASOCK_SHUTDOWN, "Shutdown"},
    {ASOCK_TIMED_OUT, "TimedOut"},
    {ASOCK_CONNECTION_REFUSED, "ConnectionRefused"},
    {ASOCK_HOST_DOWN, "HostDown"},
    {ASOCK_HOST_UNREACHABLE, "HostUnreachable"},
    {ASOCK_PROCESS_LIMIT, "ProcessLimit"},
    {ASOCK_DISCONNECTING, "Disconnecting"},
    {ASOCK_HOST_NOT_FOUND, "HostNotFound"},
    {ASOCK_TRY_AGAIN, "TryAgain"},
    {ASOCK_NO_RECOVERY, "NoRecovery"},
    {ASOCK_NO_DATA, "NoData"},
    {ASOCK_E_ARGUMENT_NULL, "ArgumentNull"},
    {ASOCK_E_ARGUMENT, "Argument"},
    {ASOCK_E_ARGUMENT_OUT_OF_RANGE, "ArgumentOutOfRange"},
    {ASOCK_E_INVALID_OPERATION, "InvalidOperation"},
    {ASOCK_E_OBJECT_DISPOSED, "ObjectDisposed"},
    {ASOCK_E_NOT_SUPPORTED, "NotSupported"},
    {ASOCK_E_FORMAT, "Format"},
    {ASOCK_E_IO, "IO"},
    {ASOCK_E_INTERNAL, NULL},
    {ASOCK_E_SMTP, NULL},
    {ASOCK_E_SMTP_CONNECT, NULL},
    {ASOCK_E_SMTP_AUTHENTICATION, NULL},
    {ASOCK_E_SMTP_TIMEOUT, NULL},
    {ASOCK_E_SMTP_STARTTLS_UNAVAILABLE, NULL},
    {ASOCK_E_SMTP_TLS, NULL},
    {ASOCK_E_SMTP_CERTIFICATE, NULL},
    {ASOCK_E_SMTP_FAILED_RECIPIENTS, NULL},
    {ASOCK_E_SMTP_PROTOCOL, NULL},
};
#define N_CODES (sizeof ALL_CODES / sizeof ALL_CODES[0])

/* The numbers of section 2 themselves (a typo in the header would break
 * every binding that mirrors them). */
TEST(codes_have_the_contract_numbers) {
    CHECK_EQ_INT(ASOCK_OK, 0);
    CHECK_EQ_INT(ASOCK_SOCKET_ERROR, -1);
    CHECK_EQ_INT(ASOCK_OPERATION_ABORTED, 995);
    CHECK_EQ_INT(ASOCK_IO_PENDING, 997);
    CHECK_EQ_INT(ASOCK_INTERRUPTED, 10004);
    CHECK_EQ_INT(ASOCK_ACCESS_DENIED, 10013);
    CHECK_EQ_INT(ASOCK_INVALID_ARGUMENT, 10022);
    CHECK_EQ_INT(ASOCK_WOULD_BLOCK, 10035);
    CHECK_EQ_INT(ASOCK_PROTOCOL_OPTION, 10042);
    CHECK_EQ_INT(ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED, 10047);
    CHECK_EQ_INT(ASOCK_ADDRESS_ALREADY_IN_USE, 10048);
    CHECK_EQ_INT(ASOCK_CONNECTION_RESET, 10054);
    CHECK_EQ_INT(ASOCK_NOT_CONNECTED, 10057);
    CHECK_EQ_INT(ASOCK_SHUTDOWN, 10058);
    CHECK_EQ_INT(ASOCK_TIMED_OUT, 10060);
    CHECK_EQ_INT(ASOCK_CONNECTION_REFUSED, 10061);
    CHECK_EQ_INT(ASOCK_DISCONNECTING, 10101);
    CHECK_EQ_INT(ASOCK_HOST_NOT_FOUND, 11001);
    CHECK_EQ_INT(ASOCK_NO_DATA, 11004);
    CHECK_EQ_INT(ASOCK_E_ARGUMENT_NULL, -1001);
    CHECK_EQ_INT(ASOCK_E_FORMAT, -1007);
    CHECK_EQ_INT(ASOCK_E_IO, -1008);
    CHECK_EQ_INT(ASOCK_E_INTERNAL, -1099);
    CHECK_EQ_INT(ASOCK_E_SMTP, -1100);
    CHECK_EQ_INT(ASOCK_E_SMTP_PROTOCOL, -1108);
}

TEST(error_name_of_every_code) {
    for (size_t i = 0; i < N_CODES; i++) {
        const char *n = asock_error_name(ALL_CODES[i].code);
        CHECK(n != NULL);
        if (n == NULL)
            continue;
        CHECK(n[0] != '\0');
        CHECK(strcmp(n, "Unknown") != 0);
        if (ALL_CODES[i].name != NULL && strcmp(n, ALL_CODES[i].name) != 0) {
            harness_fail_begin(__FILE__, __LINE__);
            fprintf(stderr, "asock_error_name(%d) = \"%s\", want \"%s\"\n", (int)ALL_CODES[i].code, n,
                    ALL_CODES[i].name);
            harness_fail_end();
        }
    }
}

TEST(error_names_are_distinct) {
    for (size_t i = 0; i < N_CODES; i++) {
        for (size_t j = i + 1; j < N_CODES; j++) {
            const char *a = asock_error_name(ALL_CODES[i].code);
            const char *b = asock_error_name(ALL_CODES[j].code);
            if (a != NULL && b != NULL && strcmp(a, b) == 0) {
                harness_fail_begin(__FILE__, __LINE__);
                fprintf(stderr, "codes %d and %d share the name \"%s\"\n", (int)ALL_CODES[i].code,
                        (int)ALL_CODES[j].code, a);
                harness_fail_end();
            }
        }
    }
}

TEST(error_name_examples_from_the_header) {
    CHECK(strcmp(asock_error_name(ASOCK_CONNECTION_RESET), "ConnectionReset") == 0);
    CHECK(strcmp(asock_error_name(ASOCK_E_ARGUMENT_NULL), "ArgumentNull") == 0);
    CHECK(strcmp(asock_error_name(0), "Success") == 0);
}

TEST(error_name_unknown_for_non_codes) {
    const asock_error not_codes[] = {1,     2,      -2,    -3,      994,   996,     998,      10000,
                                     10001, 10023,  10059, 10062,   10102, 11000,   11005,    -1000,
                                     -1009, -1098,  -1100 - 9, -1200, 12345, INT_MAX, INT_MIN, -999};
    for (size_t i = 0; i < sizeof not_codes / sizeof not_codes[0]; i++) {
        const char *n = asock_error_name(not_codes[i]);
        CHECK(n != NULL);
        if (n != NULL && strcmp(n, "Unknown") != 0) {
            harness_fail_begin(__FILE__, __LINE__);
            fprintf(stderr, "asock_error_name(%d) = \"%s\", want \"Unknown\"\n", (int)not_codes[i], n);
            harness_fail_end();
        }
    }
}

static void *name_thread(void *arg) {
    const char **out = arg;
    *out = asock_error_name(ASOCK_WOULD_BLOCK);
    return NULL;
}

TEST(error_name_is_static) {
    /* The same static string from every call and every thread; it outlives
     * other calls. */
    const char *a = asock_error_name(ASOCK_WOULD_BLOCK);
    const char *b = NULL;
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, name_thread, &b) == 0);
    pthread_join(t, NULL);
    asock_endpoint ep;
    (void)asock_endpoint_parse("x", &ep);
    CHECK(a == b);
    CHECK(strcmp(a, "WouldBlock") == 0);
}

/* A call that is known to fail with ASOCK_E_FORMAT. */
static asock_error fail_format(void) {
    asock_endpoint ep;
    return asock_endpoint_parse("definitely not an endpoint", &ep);
}

/* A call that is known to fail with ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED. */
static asock_error fail_family(void) {
    asock_endpoint ep;
    return asock_endpoint_init(99, true, 1, &ep);
}

TEST(error_message_returns_full_length_and_truncates) {
    CHECK_ERR(fail_format(), ASOCK_E_FORMAT);
    size_t full = asock_error_message(NULL, 0);
    CHECK(full > 5);
    char big[1024];
    memset(big, 'Z', sizeof big);
    CHECK_EQ_INT(asock_error_message(big, sizeof big), full);
    CHECK_EQ_INT(strlen(big), full);

    /* len 6: 5 bytes and a NUL, the returned length is still the full one. */
    char small[16];
    memset(small, 'Z', sizeof small);
    CHECK_EQ_INT(asock_error_message(small, 6), full);
    CHECK_EQ_INT(small[5], '\0');
    CHECK_EQ_INT(strlen(small), 5);
    CHECK(memcmp(small, big, 5) == 0);
    CHECK_EQ_INT(small[6], 'Z'); /* nothing written past len */

    /* len 1: just the NUL. */
    memset(small, 'Z', sizeof small);
    CHECK_EQ_INT(asock_error_message(small, 1), full);
    CHECK_EQ_INT(small[0], '\0');
    CHECK_EQ_INT(small[1], 'Z');

    /* len 0 with a buffer: nothing written. */
    memset(small, 'Z', sizeof small);
    CHECK_EQ_INT(asock_error_message(small, 0), full);
    CHECK_EQ_INT(small[0], 'Z');

    /* NULL buffer with a non-zero length: nothing written, full length. */
    CHECK_EQ_INT(asock_error_message(NULL, 100), full);

    /* Exactly full + 1: the whole text; exactly full: one byte short. */
    char *exact = malloc(full + 1);
    REQUIRE(exact != NULL);
    CHECK_EQ_INT(asock_error_message(exact, full + 1), full);
    CHECK(strcmp(exact, big) == 0);
    CHECK_EQ_INT(asock_error_message(exact, full), full);
    CHECK_EQ_INT(strlen(exact), full - 1);
    CHECK(strncmp(exact, big, full - 1) == 0);
    free(exact);
}

TEST(error_message_kept_after_successful_calls) {
    CHECK_ERR(fail_format(), ASOCK_E_FORMAT);
    char before[512], after[512];
    size_t n = asock_error_message(before, sizeof before);
    CHECK(n > 0);

    asock_endpoint ep;
    CHECK_OK(asock_endpoint_init(ASOCK_AF_INET, true, 80, &ep));
    CHECK_OK(asock_endpoint_parse("127.0.0.1:80", &ep));
    char text[ASOCK_ENDPOINT_TEXT_MAX];
    CHECK(asock_endpoint_format(&ep, text, sizeof text) > 0);
    CHECK(strcmp(asock_error_name(ASOCK_OK), "Success") == 0);
    CHECK(strcmp(asock_version(), "0.1.0") == 0);

    CHECK_EQ_INT(asock_error_message(after, sizeof after), n);
    CHECK(strcmp(before, after) == 0);
}

TEST(error_message_changes_with_the_next_failure) {
    char a[512], b[512];
    CHECK_ERR(fail_format(), ASOCK_E_FORMAT);
    asock_error_message(a, sizeof a);
    CHECK_ERR(fail_family(), ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED);
    asock_error_message(b, sizeof b);
    CHECK(strlen(b) > 0);
    CHECK(strcmp(a, b) != 0);
    /* And back: the same failure gives the same detail. */
    CHECK_ERR(fail_format(), ASOCK_E_FORMAT);
    asock_error_message(b, sizeof b);
    CHECK(strcmp(a, b) == 0);
}

struct other_thread_result {
    size_t fresh_len;  /* message length before this thread failed */
    char own[512];     /* this thread's message after its failure */
    asock_error code;
};

static void *fail_on_other_thread(void *arg) {
    struct other_thread_result *r = arg;
    r->fresh_len = asock_error_message(NULL, 0);
    r->code = fail_family();
    asock_error_message(r->own, sizeof r->own);
    return NULL;
}

TEST(error_message_is_thread_local) {
    CHECK_ERR(fail_format(), ASOCK_E_FORMAT);
    char mine[512], again[512];
    asock_error_message(mine, sizeof mine);

    struct other_thread_result r;
    memset(&r, 0, sizeof r);
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, fail_on_other_thread, &r) == 0);
    pthread_join(t, NULL);

    CHECK_EQ_INT(r.code, ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED);
    /* A thread that never failed has no detail (not the main thread's). */
    CHECK_EQ_INT(r.fresh_len, 0);
    CHECK(strlen(r.own) > 0);
    CHECK(strcmp(r.own, mine) != 0);

    /* The other thread's failure did not change this thread's message. */
    asock_error_message(again, sizeof again);
    CHECK(strcmp(mine, again) == 0);
}

#define MSG_THREADS 6
#define MSG_ROUNDS 2000

struct msg_worker {
    int kind;
    pthread_barrier_t *go;
    int mismatches;
    int wrong_codes;
};

static asock_error fail_kind(int kind) {
    asock_endpoint ep;
    switch (kind % 4) {
    case 0:
        return asock_endpoint_parse("garbage-text", &ep) == ASOCK_E_FORMAT ? ASOCK_OK : -1;
    case 1:
        return asock_endpoint_init(77, false, 0, &ep) == ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED ? ASOCK_OK : -1;
    case 2:
        return asock_endpoint_parse(NULL, &ep) == ASOCK_E_ARGUMENT_NULL ? ASOCK_OK : -1;
    default:
        return asock_socket_close((asock_socket){0}) == ASOCK_E_ARGUMENT_NULL ? ASOCK_OK : -1;
    }
}

static void *msg_worker_main(void *arg) {
    struct msg_worker *w = arg;
    pthread_barrier_wait(w->go);
    char first[512], now[512];
    if (fail_kind(w->kind) != ASOCK_OK)
        w->wrong_codes++;
    asock_error_message(first, sizeof first);
    for (int i = 0; i < MSG_ROUNDS; i++) {
        if (fail_kind(w->kind) != ASOCK_OK)
            w->wrong_codes++;
        asock_error_message(now, sizeof now);
        if (strcmp(first, now) != 0)
            w->mismatches++;
    }
    return NULL;
}

TEST(error_message_thread_local_under_concurrency) {
    /* Threads fail in different ways at the same time; each one always reads
     * its own detail back. */
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, MSG_THREADS);
    pthread_t t[MSG_THREADS];
    struct msg_worker w[MSG_THREADS];
    for (int i = 0; i < MSG_THREADS; i++) {
        w[i] = (struct msg_worker){i, &go, 0, 0};
        if (pthread_create(&t[i], NULL, msg_worker_main, &w[i]) != 0) {
            harness_fail_cond(__FILE__, __LINE__, "pthread_create");
            exit(1); /* the barrier would never open */
        }
    }
    for (int i = 0; i < MSG_THREADS; i++) {
        pthread_join(t[i], NULL);
        CHECK_EQ_INT(w[i].mismatches, 0);
        CHECK_EQ_INT(w[i].wrong_codes, 0);
    }
    pthread_barrier_destroy(&go);
}

TEST(version_is_0_1_0) {
    const char *v = asock_version();
    REQUIRE(v != NULL);
    CHECK(strcmp(v, "0.1.0") == 0);
    unsigned a, b, c;
    char tail;
    CHECK_EQ_INT(sscanf(v, "%u.%u.%u%c", &a, &b, &c, &tail), 3);
    CHECK(asock_version() == v || strcmp(asock_version(), v) == 0);
}

struct errno_case {
    int errnum;
    const char *errname;
    asock_error want;
};

TEST(error_from_errno_as_dotnet_on_unix) {
    const struct errno_case cases[] = {
        {EAGAIN, "EAGAIN", ASOCK_WOULD_BLOCK},
        {EWOULDBLOCK, "EWOULDBLOCK", ASOCK_WOULD_BLOCK},
        {EPIPE, "EPIPE", ASOCK_SHUTDOWN},
        {ECONNRESET, "ECONNRESET", ASOCK_CONNECTION_RESET},
        {ECONNREFUSED, "ECONNREFUSED", ASOCK_CONNECTION_REFUSED},
        {ECONNABORTED, "ECONNABORTED", ASOCK_CONNECTION_ABORTED},
        {EBADF, "EBADF", ASOCK_OPERATION_ABORTED},
        {ECANCELED, "ECANCELED", ASOCK_OPERATION_ABORTED},
        {EACCES, "EACCES", ASOCK_ACCESS_DENIED},
        {EPERM, "EPERM", ASOCK_ACCESS_DENIED},
        {EMFILE, "EMFILE", ASOCK_TOO_MANY_OPEN_SOCKETS},
        {ENFILE, "ENFILE", ASOCK_TOO_MANY_OPEN_SOCKETS},
        {EADDRINUSE, "EADDRINUSE", ASOCK_ADDRESS_ALREADY_IN_USE},
        {EADDRNOTAVAIL, "EADDRNOTAVAIL", ASOCK_ADDRESS_NOT_AVAILABLE},
        {EAFNOSUPPORT, "EAFNOSUPPORT", ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED},
        {ETIMEDOUT, "ETIMEDOUT", ASOCK_TIMED_OUT},
        {ENOTCONN, "ENOTCONN", ASOCK_NOT_CONNECTED},
        {EISCONN, "EISCONN", ASOCK_IS_CONNECTED},
        {EINPROGRESS, "EINPROGRESS", ASOCK_IN_PROGRESS},
        {EALREADY, "EALREADY", ASOCK_ALREADY_IN_PROGRESS},
        {EINTR, "EINTR", ASOCK_INTERRUPTED},
        {EINVAL, "EINVAL", ASOCK_INVALID_ARGUMENT},
        {EMSGSIZE, "EMSGSIZE", ASOCK_MESSAGE_SIZE},
        {ENOBUFS, "ENOBUFS", ASOCK_NO_BUFFER_SPACE_AVAILABLE},
        {ENOTSOCK, "ENOTSOCK", ASOCK_NOT_SOCKET},
        {ENOPROTOOPT, "ENOPROTOOPT", ASOCK_PROTOCOL_OPTION},
        {EOPNOTSUPP, "EOPNOTSUPP", ASOCK_OPERATION_NOT_SUPPORTED},
        {EPROTONOSUPPORT, "EPROTONOSUPPORT", ASOCK_PROTOCOL_NOT_SUPPORTED},
        {ESOCKTNOSUPPORT, "ESOCKTNOSUPPORT", ASOCK_SOCKET_NOT_SUPPORTED},
        {EHOSTUNREACH, "EHOSTUNREACH", ASOCK_HOST_UNREACHABLE},
        {ENETUNREACH, "ENETUNREACH", ASOCK_NETWORK_UNREACHABLE},
        {ESHUTDOWN, "ESHUTDOWN", ASOCK_DISCONNECTING},
        {ENOENT, "ENOENT", ASOCK_ADDRESS_NOT_AVAILABLE},
        /* .NET's SocketErrorPal.Unix also maps these two. */
        {ENXIO, "ENXIO", ASOCK_HOST_NOT_FOUND},
        {ENODATA, "ENODATA", ASOCK_NO_DATA},
        /* Not in .NET's table: the generic SocketError. */
        {EIO, "EIO", ASOCK_SOCKET_ERROR},
        {ENOSPC, "ENOSPC", ASOCK_SOCKET_ERROR},
        {99999, "99999 (unknown)", ASOCK_SOCKET_ERROR},
        {-5, "-5 (unknown)", ASOCK_SOCKET_ERROR},
        {INT_MAX, "INT_MAX (unknown)", ASOCK_SOCKET_ERROR},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        asock_error got = asock_error_from_errno(cases[i].errnum);
        if (got != cases[i].want) {
            harness_fail_begin(__FILE__, __LINE__);
            fprintf(stderr, "asock_error_from_errno(%s) = %d %s, want %d %s\n", cases[i].errname, (int)got,
                    asock_error_name(got), (int)cases[i].want, asock_error_name(cases[i].want));
            harness_fail_end();
        }
    }
}

int main(void) {
    RUN(codes_have_the_contract_numbers);
    RUN(error_name_of_every_code);
    RUN(error_names_are_distinct);
    RUN(error_name_examples_from_the_header);
    RUN(error_name_unknown_for_non_codes);
    RUN(error_name_is_static);
    RUN(error_message_returns_full_length_and_truncates);
    RUN(error_message_kept_after_successful_calls);
    RUN(error_message_changes_with_the_next_failure);
    RUN(error_message_is_thread_local);
    RUN(error_message_thread_local_under_concurrency);
    RUN(version_is_0_1_0);
    RUN(error_from_errno_as_dotnet_on_unix);
    return harness_finish();
}
