/*
 * test_smtp_client.c — section 7, the client half: argument and state
 * checks of every asock_smtp_client_* setter and of send_async (refused
 * sends start nothing and call nothing back), pickup-directory delivery,
 * and one send against a scripted fake server (smtp_helpers.h) for each
 * fault and each extension: refused connect, 421 greeting, silence,
 * garbage, oversized lines, a close mid-DATA, STARTTLS required but not
 * offered, the HELO fallback, AUTH (refused without TLS, PLAIN when
 * allowed, 535, the secret masked in traces), a rejected sender, SIZE,
 * SMTPUTF8, DSN, rejected recipients under both policies, and the exact
 * commands and DATA payload of a successful send.
 */
#include "harness.h"

#include <dirent.h>
#include <sys/stat.h>

#include "smtp_helpers.h"

/* A self-signed CA certificate (EC P-256), only ever parsed. */
static const char TEST_CA_PEM[] = "-----BEGIN CERTIFICATE-----\n"
                                  "MIIBhzCCAS2gAwIBAgIUTr2VEmCXbID6M3W6QhY9T9vsCAowCgYIKoZIzj0EAwIw\n"
                                  "GDEWMBQGA1UEAwwNYXNvY2stdGVzdC1jYTAgFw0yNjExMjIwNTE3MTRaGA8yMTI2\n"
                                  "MTAyOTA1MTcxNFowGDEWMBQGA1UEAwwNYXNvY2stdGVzdC1jYTBZMBMGByqGSM49\n"
                                  "AgEGCCqGSM49AwEHA0IABHQOh3XghCJ8sY2amfbNrP2XKizPkdpsYxQmDIxzwAYT\n"
                                  "kUHPfV188T1Y8QBCZjxjDqZxEXFSBvwShnA4+dKUho6jUzBRMB0GA1UdDgQWBBT5\n"
                                  "3Ejj1sBKJliVNqEranSz4xivQjAfBgNVHSMEGDAWgBT53Ejj1sBKJliVNqEranSz\n"
                                  "4xivQjAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIQDOErE/wtlh\n"
                                  "1i5pLlfR8v04I52g6R2tCpEn47qQGVSy/QIgciuS9eJ/nMP/0hR4phEcanNVbzNb\n"
                                  "93ydSzEDvCsZE2s=\n"
                                  "-----END CERTIFICATE-----\n";

/* Writes `text` to a new file in `dir`; the path goes to `path`. */
static bool write_file(const char *dir, const char *name, const char *text, char *path, size_t len) {
    snprintf(path, len, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (f == NULL)
        return false;
    bool ok = fwrite(text, 1, strlen(text), f) == strlen(text);
    return fclose(f) == 0 && ok;
}

/* Reads a whole file into a new NUL-terminated string (caller frees). */
static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    sh_buf b = {0};
    sh_buf_adds(&b, "");
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        sh_buf_add(&b, chunk, n);
    fclose(f);
    if (len)
        *len = b.len;
    return b.p;
}

/* The names in `dir` (dot-files included, "." and ".." not), up to 8. */
static int list_dir(const char *dir, char names[8][256]) {
    DIR *d = opendir(dir);
    if (d == NULL)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if (n < 8)
            snprintf(names[n], 256, "%s", e->d_name);
        n++;
    }
    closedir(d);
    return n;
}

static bool ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* ---- handles and setters ------------------------------------------------- */

TEST(new_free_and_every_call_after_free_is_object_disposed) {
    CHECK_ERR(asock_smtp_client_new((asock_loop){0}, NULL), ASOCK_E_ARGUMENT_NULL);
    CHECK_OK(asock_smtp_client_free((asock_smtp_client){0}));
    asock_smtp_client c;
    REQUIRE_OK(asock_smtp_client_new((asock_loop){0}, &c));
    CHECK(c.id != 0);
    asock_mail_message m = sc_message("a@x.test", "b@y.test");
    CHECK_OK(asock_smtp_client_free(c));
    CHECK_ERR(asock_smtp_client_free(c), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_smtp_client_set_host(c, "127.0.0.1"), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_smtp_client_set_port(c, 25), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_smtp_client_set_enable_ssl(c, false), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_smtp_client_set_security(c, ASOCK_SMTP_SECURITY_NONE), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_smtp_client_set_credentials(c, "u", "p"), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_smtp_client_set_oauth2_token(c, "u", "t"), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_smtp_client_set_allow_plaintext_auth(c, true), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_smtp_client_set_timeout(c, 1000), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_smtp_client_set_idle_timeout(c, 1000), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_smtp_client_set_delivery_method(c, ASOCK_SMTP_DELIVERY_NETWORK), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_smtp_client_set_pickup_directory(c, "/tmp"), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_smtp_client_set_send_completed(c, sc_on_completed), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_smtp_client_set_recipient_policy(c, ASOCK_SMTP_RECIPIENTS_ALL_OR_NOTHING),
              ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_smtp_client_set_client_domain(c, "client.test"), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_smtp_client_send_async(c, m, NULL), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_smtp_client_send_async_cancel(c), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_smtp_client_send(c, m), ASOCK_E_OBJECT_DISPOSED);
    /* {0} is no client at all. */
    CHECK_ERR(asock_smtp_client_set_port((asock_smtp_client){0}, 25), ASOCK_E_ARGUMENT_NULL);
    CHECK_OK(asock_mail_message_free(m));
}

TEST(setters_check_their_arguments) {
    asock_smtp_client c;
    REQUIRE_OK(asock_smtp_client_new((asock_loop){0}, &c));
    /* port */
    CHECK_ERR(asock_smtp_client_set_port(c, 0), ASOCK_E_ARGUMENT_OUT_OF_RANGE);
    CHECK_ERR(asock_smtp_client_set_port(c, -1), ASOCK_E_ARGUMENT_OUT_OF_RANGE);
    CHECK_ERR(asock_smtp_client_set_port(c, 65536), ASOCK_E_ARGUMENT_OUT_OF_RANGE);
    CHECK_ERR(asock_smtp_client_set_port(c, INT32_MIN), ASOCK_E_ARGUMENT_OUT_OF_RANGE);
    CHECK_OK(asock_smtp_client_set_port(c, 1));
    CHECK_OK(asock_smtp_client_set_port(c, 65535));
    /* enumerations */
    CHECK_ERR(asock_smtp_client_set_security(c, 5), ASOCK_E_ARGUMENT);
    CHECK_ERR(asock_smtp_client_set_security(c, -1), ASOCK_E_ARGUMENT);
    for (int32_t mode = ASOCK_SMTP_SECURITY_AUTO; mode <= ASOCK_SMTP_SECURITY_IMPLICIT_TLS; mode++)
        CHECK_OK(asock_smtp_client_set_security(c, mode));
    CHECK_ERR(asock_smtp_client_set_delivery_method(c, 2), ASOCK_E_ARGUMENT);
    CHECK_ERR(asock_smtp_client_set_delivery_method(c, -1), ASOCK_E_ARGUMENT);
    CHECK_OK(asock_smtp_client_set_delivery_method(c, ASOCK_SMTP_DELIVERY_PICKUP_DIRECTORY));
    CHECK_OK(asock_smtp_client_set_delivery_method(c, ASOCK_SMTP_DELIVERY_NETWORK));
    CHECK_ERR(asock_smtp_client_set_recipient_policy(c, 2), ASOCK_E_ARGUMENT);
    CHECK_ERR(asock_smtp_client_set_recipient_policy(c, -1), ASOCK_E_ARGUMENT);
    CHECK_OK(asock_smtp_client_set_recipient_policy(c, ASOCK_SMTP_RECIPIENTS_DELIVER_TO_ACCEPTED));
    CHECK_OK(asock_smtp_client_set_recipient_policy(c, ASOCK_SMTP_RECIPIENTS_ALL_OR_NOTHING));
    /* times */
    CHECK_ERR(asock_smtp_client_set_timeout(c, 0), ASOCK_E_ARGUMENT_OUT_OF_RANGE);
    CHECK_ERR(asock_smtp_client_set_timeout(c, -5), ASOCK_E_ARGUMENT_OUT_OF_RANGE);
    CHECK_OK(asock_smtp_client_set_timeout(c, 1));
    CHECK_ERR(asock_smtp_client_set_idle_timeout(c, -1), ASOCK_E_ARGUMENT_OUT_OF_RANGE);
    CHECK_OK(asock_smtp_client_set_idle_timeout(c, 0));
    CHECK_OK(asock_smtp_client_set_idle_timeout(c, ASOCK_SMTP_DEFAULT_IDLE_TIMEOUT_MS));
    /* strings: NULL */
    CHECK_ERR(asock_smtp_client_set_host(c, NULL), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_smtp_client_set_pickup_directory(c, NULL), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_smtp_client_set_client_domain(c, NULL), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_smtp_client_add_trusted_ca_file(c, NULL), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_smtp_client_set_credentials(c, "user", NULL), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_smtp_client_set_credentials(c, NULL, "pass"), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_smtp_client_set_oauth2_token(c, "user", NULL), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_smtp_client_set_oauth2_token(c, NULL, "token"), ASOCK_E_ARGUMENT_NULL);
    CHECK_OK(asock_smtp_client_set_credentials(c, "user", "pass"));
    CHECK_OK(asock_smtp_client_set_credentials(c, NULL, NULL)); /* clears */
    CHECK_OK(asock_smtp_client_set_oauth2_token(c, "user", "token"));
    CHECK_OK(asock_smtp_client_set_oauth2_token(c, NULL, NULL));
    /* host: no line breaks, no white space; "" is stored */
    CHECK_ERR(asock_smtp_client_set_host(c, "mail.example.com\r\nRCPT TO:<x@y.z>"), ASOCK_E_ARGUMENT);
    CHECK_ERR(asock_smtp_client_set_host(c, "mail\n.example.com"), ASOCK_E_ARGUMENT);
    CHECK_ERR(asock_smtp_client_set_host(c, "mail\r"), ASOCK_E_ARGUMENT);
    CHECK_ERR(asock_smtp_client_set_host(c, "mail example.com"), ASOCK_E_ARGUMENT);
    CHECK_OK(asock_smtp_client_set_host(c, ""));
    CHECK_OK(asock_smtp_client_set_host(c, "mail.example.com"));
    CHECK_OK(asock_smtp_client_set_host(c, "[127.0.0.1]"));
    /* client domain */
    CHECK_ERR(asock_smtp_client_set_client_domain(c, "client test"), ASOCK_E_ARGUMENT);
    CHECK_ERR(asock_smtp_client_set_client_domain(c, "client\r\nMAIL FROM:<x@y.z>"), ASOCK_E_ARGUMENT);
    CHECK_OK(asock_smtp_client_set_client_domain(c, "client.test"));
    /* pickup directory: absolute only */
    CHECK_ERR(asock_smtp_client_set_pickup_directory(c, "relative/dir"), ASOCK_E_ARGUMENT);
    CHECK_ERR(asock_smtp_client_set_pickup_directory(c, "./here"), ASOCK_E_ARGUMENT);
    CHECK_ERR(asock_smtp_client_set_pickup_directory(c, ""), ASOCK_E_ARGUMENT);
    CHECK_OK(asock_smtp_client_set_pickup_directory(c, "/nonexistent/is/checked/at/send/time"));
    CHECK_OK(asock_smtp_client_set_enable_ssl(c, true));
    CHECK_OK(asock_smtp_client_set_enable_ssl(c, false));
    CHECK_OK(asock_smtp_client_set_allow_plaintext_auth(c, true));
    CHECK_OK(asock_smtp_client_set_send_completed(c, NULL));
    CHECK_OK(asock_smtp_client_free(c));
}

TEST(trusted_ca_file_missing_is_io_without_a_certificate_is_format) {
    char dir[] = "/tmp/asock-smtp-ca-XXXXXX";
    REQUIRE(mkdtemp(dir) != NULL);
    char good[512], bad[512], empty[512], missing[512];
    REQUIRE(write_file(dir, "ca.pem", TEST_CA_PEM, good, sizeof good));
    REQUIRE(write_file(dir, "not-a-cert.pem", "just some words\nand no PEM block at all\n", bad, sizeof bad));
    REQUIRE(write_file(dir, "empty.pem", "", empty, sizeof empty));
    snprintf(missing, sizeof missing, "%s/missing.pem", dir);
    asock_smtp_client c;
    REQUIRE_OK(asock_smtp_client_new((asock_loop){0}, &c));
    CHECK_ERR(asock_smtp_client_add_trusted_ca_file(c, missing), ASOCK_E_IO);
    CHECK_ERR(asock_smtp_client_add_trusted_ca_file(c, dir), ASOCK_E_IO); /* a directory is not readable as a file */
    CHECK_ERR(asock_smtp_client_add_trusted_ca_file(c, bad), ASOCK_E_FORMAT);
    CHECK_ERR(asock_smtp_client_add_trusted_ca_file(c, empty), ASOCK_E_FORMAT);
    CHECK_OK(asock_smtp_client_add_trusted_ca_file(c, good));
    CHECK_OK(asock_smtp_client_free(c));
    unlink(good);
    unlink(bad);
    unlink(empty);
    CHECK(rmdir(dir) == 0);
}

TEST(delivery_notification_flags_are_checked) {
    asock_mail_message m;
    REQUIRE_OK(asock_mail_message_new(&m));
    CHECK_OK(asock_mail_message_set_delivery_notification(m, ASOCK_DSN_NONE));
    CHECK_OK(asock_mail_message_set_delivery_notification(m, ASOCK_DSN_ON_SUCCESS));
    CHECK_OK(asock_mail_message_set_delivery_notification(m, ASOCK_DSN_ON_FAILURE));
    CHECK_OK(asock_mail_message_set_delivery_notification(m, ASOCK_DSN_DELAY));
    CHECK_OK(asock_mail_message_set_delivery_notification(m, ASOCK_DSN_ON_SUCCESS | ASOCK_DSN_ON_FAILURE));
    CHECK_OK(asock_mail_message_set_delivery_notification(m, ASOCK_DSN_ON_FAILURE | ASOCK_DSN_DELAY));
    CHECK_OK(asock_mail_message_set_delivery_notification(
        m, ASOCK_DSN_ON_SUCCESS | ASOCK_DSN_ON_FAILURE | ASOCK_DSN_DELAY));
    CHECK_OK(asock_mail_message_set_delivery_notification(m, ASOCK_DSN_NEVER));
    CHECK_ERR(asock_mail_message_set_delivery_notification(m, ASOCK_DSN_NEVER | ASOCK_DSN_ON_SUCCESS),
              ASOCK_E_ARGUMENT);
    CHECK_ERR(asock_mail_message_set_delivery_notification(m, ASOCK_DSN_NEVER | ASOCK_DSN_DELAY), ASOCK_E_ARGUMENT);
    CHECK_ERR(asock_mail_message_set_delivery_notification(m, 8), ASOCK_E_ARGUMENT);
    CHECK_ERR(asock_mail_message_set_delivery_notification(m, -1), ASOCK_E_ARGUMENT);
    CHECK_ERR(asock_mail_message_set_delivery_notification(m, INT32_MIN), ASOCK_E_ARGUMENT);
    CHECK_ERR(asock_mail_message_set_delivery_notification((asock_mail_message){0}, ASOCK_DSN_NONE),
              ASOCK_E_ARGUMENT_NULL);
    CHECK_OK(asock_mail_message_free(m));
    CHECK_ERR(asock_mail_message_set_delivery_notification(m, ASOCK_DSN_NONE), ASOCK_E_OBJECT_DISPOSED);
}

/* ---- send_async refusals ------------------------------------------------------- */

TEST(send_async_refusals_start_nothing_and_call_nothing_back) {
    fs_server *s = fs_new();
    REQUIRE(fs_start(s));
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    REQUIRE(sc_client_new(s, &r, &c));
    asock_mail_message ok = sc_message("a@x.test", "b@y.test");
    asock_mail_message no_from = sc_message(NULL, "b@y.test");
    asock_mail_message no_rcpt = sc_message("a@x.test", NULL);

    CHECK_ERR(asock_smtp_client_send_async(c, (asock_mail_message){0}, &r), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_smtp_client_send_async(c, no_from, &r), ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(asock_smtp_client_send_async(c, no_rcpt, &r), ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(asock_smtp_client_send(c, no_from), ASOCK_E_INVALID_OPERATION);

    /* Network delivery: host unset, host "", port unset. */
    asock_smtp_client n1, n2, n3;
    REQUIRE_OK(asock_smtp_client_new((asock_loop){0}, &n1));
    REQUIRE_OK(asock_smtp_client_new((asock_loop){0}, &n2));
    REQUIRE_OK(asock_smtp_client_new((asock_loop){0}, &n3));
    sc_bind(n1, &r);
    sc_bind(n2, &r);
    sc_bind(n3, &r);
    CHECK_OK(asock_smtp_client_set_send_completed(n1, sc_on_completed));
    CHECK_OK(asock_smtp_client_set_send_completed(n2, sc_on_completed));
    CHECK_OK(asock_smtp_client_set_send_completed(n3, sc_on_completed));
    CHECK_OK(asock_smtp_client_set_port(n1, s->port));
    CHECK_ERR(asock_smtp_client_send_async(n1, ok, &r), ASOCK_E_INVALID_OPERATION);
    CHECK_OK(asock_smtp_client_set_host(n2, ""));
    CHECK_OK(asock_smtp_client_set_port(n2, s->port));
    CHECK_ERR(asock_smtp_client_send_async(n2, ok, &r), ASOCK_E_INVALID_OPERATION);
    CHECK_OK(asock_smtp_client_set_host(n3, "127.0.0.1"));
    CHECK_ERR(asock_smtp_client_send_async(n3, ok, &r), ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(asock_smtp_client_send(n3, ok), ASOCK_E_INVALID_OPERATION);

    /* Pickup delivery: no directory; TLS required in any form. */
    char dir[] = "/tmp/asock-smtp-refuse-XXXXXX";
    REQUIRE(mkdtemp(dir) != NULL);
    CHECK_OK(asock_smtp_client_set_delivery_method(c, ASOCK_SMTP_DELIVERY_PICKUP_DIRECTORY));
    CHECK_ERR(asock_smtp_client_send_async(c, ok, &r), ASOCK_E_INVALID_OPERATION);
    CHECK_OK(asock_smtp_client_set_pickup_directory(c, dir));
    CHECK_OK(asock_smtp_client_set_enable_ssl(c, true));
    CHECK_ERR(asock_smtp_client_send_async(c, ok, &r), ASOCK_E_INVALID_OPERATION);
    CHECK_OK(asock_smtp_client_set_security(c, ASOCK_SMTP_SECURITY_STARTTLS));
    CHECK_ERR(asock_smtp_client_send_async(c, ok, &r), ASOCK_E_INVALID_OPERATION);
    CHECK_OK(asock_smtp_client_set_security(c, ASOCK_SMTP_SECURITY_IMPLICIT_TLS));
    CHECK_ERR(asock_smtp_client_send_async(c, ok, &r), ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(asock_smtp_client_send(c, ok), ASOCK_E_INVALID_OPERATION);

    /* A freed client. */
    CHECK_OK(asock_smtp_client_free(n1));
    CHECK_ERR(asock_smtp_client_send_async(n1, ok, &r), ASOCK_E_OBJECT_DISPOSED);

    /* Nothing started: no callback, no connection, no file. */
    CHECK(sh_flush_default_loop(NULL));
    CHECK_EQ_INT(sc_calls(&r), 0);
    CHECK_EQ_INT(fs_conn_count(s), 0);
    char names[8][256];
    CHECK_EQ_INT(list_dir(dir, names), 0);
    CHECK(rmdir(dir) == 0);

    CHECK_OK(asock_smtp_client_free(n2));
    CHECK_OK(asock_smtp_client_free(n3));
    sc_finish(c, s);
    sc_unbind(n1);
    sc_unbind(n2);
    sc_unbind(n3);
    CHECK_EQ_INT(sc_calls(&r), 0);
    CHECK_OK(asock_mail_message_free(ok));
    CHECK_OK(asock_mail_message_free(no_from));
    CHECK_OK(asock_mail_message_free(no_rcpt));
    sc_rec_destroy(&r);
    fs_free(s);
}

TEST(every_setter_and_a_second_send_are_refused_while_a_send_is_in_progress) {
    fs_server *s = fs_new();
    s->silent_greeting = true; /* the send stays in progress */
    REQUIRE(fs_start(s));
    char dir[] = "/tmp/asock-smtp-busy-XXXXXX";
    REQUIRE(mkdtemp(dir) != NULL);
    char ca[512];
    REQUIRE(write_file(dir, "ca.pem", TEST_CA_PEM, ca, sizeof ca));
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    REQUIRE(sc_client_new(s, &r, &c));
    asock_mail_message m = sc_message("a@x.test", "b@y.test");
    int token;
    REQUIRE_OK(asock_smtp_client_send_async(c, m, &token));
    CHECK(fs_wait_conns(s, 1));

    const asock_error busy = ASOCK_E_INVALID_OPERATION;
    CHECK_ERR(asock_smtp_client_send_async(c, m, &token), busy);
    CHECK_ERR(asock_smtp_client_send(c, m), busy);
    CHECK_ERR(asock_smtp_client_set_host(c, "127.0.0.1"), busy);
    CHECK_ERR(asock_smtp_client_set_port(c, s->port), busy);
    CHECK_ERR(asock_smtp_client_set_enable_ssl(c, false), busy);
    CHECK_ERR(asock_smtp_client_set_security(c, ASOCK_SMTP_SECURITY_NONE), busy);
    CHECK_ERR(asock_smtp_client_set_credentials(c, "u", "p"), busy);
    CHECK_ERR(asock_smtp_client_set_credentials(c, NULL, NULL), busy);
    CHECK_ERR(asock_smtp_client_set_oauth2_token(c, "u", "t"), busy);
    CHECK_ERR(asock_smtp_client_set_allow_plaintext_auth(c, true), busy);
    CHECK_ERR(asock_smtp_client_set_timeout(c, 1000), busy);
    CHECK_ERR(asock_smtp_client_set_idle_timeout(c, 1000), busy);
    CHECK_ERR(asock_smtp_client_set_delivery_method(c, ASOCK_SMTP_DELIVERY_PICKUP_DIRECTORY), busy);
    CHECK_ERR(asock_smtp_client_set_pickup_directory(c, dir), busy);
    CHECK_ERR(asock_smtp_client_set_recipient_policy(c, ASOCK_SMTP_RECIPIENTS_DELIVER_TO_ACCEPTED), busy);
    CHECK_ERR(asock_smtp_client_add_trusted_ca_file(c, ca), busy);
    CHECK_ERR(asock_smtp_client_set_client_domain(c, "client.test"), busy);
    CHECK_EQ_INT(sc_calls(&r), 0);

    CHECK_OK(asock_smtp_client_send_async_cancel(c));
    REQUIRE(sc_wait(&r, 1, sh_wait_ms()));
    sc_outcome o = sc_get(&r, 0);
    CHECK(o.cancelled);
    CHECK_ERR(o.error, ASOCK_OPERATION_ABORTED);
    CHECK(o.token == &token);
    /* Settable again once it completed. */
    CHECK_OK(asock_smtp_client_set_timeout(c, 1000));
    CHECK_OK(asock_smtp_client_set_client_domain(c, "client.test"));

    sc_finish(c, s);
    CHECK_EQ_INT(sc_calls(&r), 1);
    CHECK_OK(asock_mail_message_free(m));
    sc_rec_destroy(&r);
    fs_free(s);
    unlink(ca);
    CHECK(rmdir(dir) == 0);
}

/* ---- pickup directory ----------------------------------------------------------- */

TEST(pickup_directory_gets_one_eml_file_with_the_envelope_first) {
    char dir[] = "/tmp/asock-smtp-pickup-XXXXXX";
    REQUIRE(mkdtemp(dir) != NULL);
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    REQUIRE_OK(asock_smtp_client_new((asock_loop){0}, &c)); /* no host, no port: not needed */
    sc_bind(c, &r);
    CHECK_OK(asock_smtp_client_set_send_completed(c, sc_on_completed));
    CHECK_OK(asock_smtp_client_set_delivery_method(c, ASOCK_SMTP_DELIVERY_PICKUP_DIRECTORY));
    CHECK_OK(asock_smtp_client_set_pickup_directory(c, dir));
    asock_mail_message m = sc_message("a@x.test", "b@y.test");
    CHECK_OK(asock_mail_message_add_cc(m, "c@y.test", "Carol"));
    CHECK_OK(asock_mail_message_add_bcc(m, "d@y.test", NULL));
    int token;
    sc_outcome o;
    REQUIRE(sc_run(c, &r, m, &token, &o));
    CHECK_OK(o.error);
    CHECK_EQ_INT(o.status, 250);
    CHECK(!o.cancelled);
    CHECK(o.token == &token);
    CHECK(!o.message_null);
    CHECK_EQ_INT(o.n_failed, 0);

    char names[8][256];
    int n = list_dir(dir, names);
    CHECK_EQ_INT(n, 1); /* the .eml and nothing else (no temporary file left) */
    if (n == 1) {
        CHECK(ends_with(names[0], ".eml"));
        CHECK(names[0][0] != '.');
        CHECK(strlen(names[0]) > strlen(".eml"));
        char path[2400];
        snprintf(path, sizeof path, "%s/%s", dir, names[0]);
        char *text = read_file(path, NULL);
        REQUIRE(text != NULL);
        static const char head[] = "X-Sender: a@x.test\r\n"
                                   "X-Receiver: b@y.test\r\n"
                                   "X-Receiver: c@y.test\r\n"
                                   "X-Receiver: d@y.test\r\n";
        CHECK(strncmp(text, head, strlen(head)) == 0);
        const char *msg = text + strlen(head);
        CHECK(strstr(msg, "X-Receiver") == NULL && strstr(msg, "X-Sender") == NULL);
        CHECK(strstr(msg, "Subject: fake server test\r\n") != NULL);
        CHECK(strstr(msg, "Hello from the C tests.") != NULL);
        CHECK(strstr(msg, "d@y.test") == NULL); /* Bcc: envelope only */
        free(text);
        unlink(path);
    }
    for (int i = 0; i < n && i < 8; i++) { /* whatever else was left */
        char path[2400];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    CHECK(rmdir(dir) == 0);
    sc_finish(c, NULL);
    CHECK_EQ_INT(sc_calls(&r), 1);
    CHECK_OK(asock_mail_message_free(m));
    sc_rec_destroy(&r);
}

TEST(pickup_directory_removed_before_the_send_completes_with_io) {
    char dir[] = "/tmp/asock-smtp-gone-XXXXXX";
    REQUIRE(mkdtemp(dir) != NULL);
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    REQUIRE_OK(asock_smtp_client_new((asock_loop){0}, &c));
    sc_bind(c, &r);
    CHECK_OK(asock_smtp_client_set_send_completed(c, sc_on_completed));
    CHECK_OK(asock_smtp_client_set_delivery_method(c, ASOCK_SMTP_DELIVERY_PICKUP_DIRECTORY));
    CHECK_OK(asock_smtp_client_set_pickup_directory(c, dir));
    REQUIRE(rmdir(dir) == 0);
    asock_mail_message m = sc_message("a@x.test", "b@y.test");
    sc_outcome o;
    REQUIRE(sc_run(c, &r, m, NULL, &o));
    CHECK_ERR(o.error, ASOCK_E_IO);
    CHECK(!o.cancelled);
    CHECK(o.token == NULL);
    CHECK(o.message[0] != '\0');
    /* The blocking form says the same. */
    CHECK_ERR(asock_smtp_client_send(c, m), ASOCK_E_IO);
    struct stat st;
    CHECK(stat(dir, &st) != 0); /* not created behind our back */
    sc_finish(c, NULL);
    CHECK_EQ_INT(sc_calls(&r), 1);
    CHECK_OK(asock_mail_message_free(m));
    sc_rec_destroy(&r);
}

/* ---- faults ------------------------------------------------------------------------ */

TEST(connection_refused_is_smtp_connect_with_the_socket_error) {
    /* A port that is bound but not listening refuses connections. */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    REQUIRE(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
    REQUIRE(getsockname(fd, (struct sockaddr *)&a, &al) == 0);
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    REQUIRE(sc_client_new(NULL, &r, &c));
    CHECK_OK(asock_smtp_client_set_port(c, ntohs(a.sin_port)));
    asock_mail_message m = sc_message("a@x.test", "b@y.test");
    int token;
    sc_outcome o;
    REQUIRE(sc_run(c, &r, m, &token, &o));
    CHECK_ERR(o.error, ASOCK_E_SMTP_CONNECT);
    CHECK_ERR(o.socket_error, ASOCK_CONNECTION_REFUSED);
    CHECK_EQ_INT(o.status, ASOCK_SMTP_STATUS_GENERAL_FAILURE);
    CHECK(!o.cancelled);
    CHECK(o.token == &token);
    CHECK(o.message[0] != '\0');
    /* Blocking: the same code, the reason in asock_error_message. */
    CHECK_ERR(asock_smtp_client_send(c, m), ASOCK_E_SMTP_CONNECT);
    char msg[512];
    CHECK(strlen(last_message(msg, sizeof msg)) > 0);
    sc_finish(c, NULL);
    CHECK_EQ_INT(sc_calls(&r), 1);
    CHECK_OK(asock_mail_message_free(m));
    sc_rec_destroy(&r);
    close(fd);
}

/* One send against `s` (started here) with default settings; the outcome. */
static bool one_send(fs_server *s, sc_outcome *o, int32_t timeout_ms) {
    if (!fs_start(s)) {
        harness_fail_cond(__FILE__, __LINE__, "fs_start");
        return false;
    }
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    if (!sc_client_new(s, &r, &c)) {
        sc_rec_destroy(&r);
        return false;
    }
    if (timeout_ms > 0)
        CHECK_OK(asock_smtp_client_set_timeout(c, timeout_ms));
    asock_mail_message m = sc_message("a@x.test", "b@y.test");
    bool ok = sc_run(c, &r, m, &r, o);
    if (ok) {
        CHECK(o->token == &r);
        CHECK(!o->cancelled);
        CHECK(!o->message_null);
    }
    sc_finish(c, s);
    CHECK_EQ_INT(sc_calls(&r), ok ? 1 : 0);
    CHECK_OK(asock_mail_message_free(m));
    sc_rec_destroy(&r);
    return ok;
}

TEST(greeting_421_is_smtp_connect_with_status_421) {
    fs_server *s = fs_new();
    s->greeting = "421 4.3.2 fake.test busy, try again later\r\n";
    sc_outcome o;
    if (one_send(s, &o, 0)) {
        CHECK_ERR(o.error, ASOCK_E_SMTP_CONNECT);
        CHECK_EQ_INT(o.status, 421);
        CHECK(strstr(o.message, "421") != NULL);
    }
    CHECK(!fs_rx_has(s, "MAIL"));
    fs_free(s);
}

TEST(other_non_220_greeting_is_smtp_connect_with_its_code) {
    fs_server *s = fs_new();
    s->greeting = "554 5.3.2 no service for you\r\n";
    sc_outcome o;
    if (one_send(s, &o, 0)) {
        CHECK_ERR(o.error, ASOCK_E_SMTP_CONNECT);
        CHECK_EQ_INT(o.status, 554);
    }
    CHECK(!fs_rx_has(s, "MAIL"));
    fs_free(s);
}

TEST(silent_server_times_out_after_about_the_client_timeout) {
    fs_server *s = fs_new();
    s->silent_greeting = true;
    REQUIRE(fs_start(s));
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    REQUIRE(sc_client_new(s, &r, &c));
    const int timeout = 400;
    CHECK_OK(asock_smtp_client_set_timeout(c, timeout));
    asock_mail_message m = sc_message("a@x.test", "b@y.test");
    int64_t t0 = now_ms();
    sc_outcome o;
    REQUIRE(sc_run(c, &r, m, NULL, &o));
    int64_t took = o.at_ms - t0;
    CHECK_ERR(o.error, ASOCK_E_SMTP_TIMEOUT);
    CHECK_ERR(o.socket_error, ASOCK_TIMED_OUT);
    CHECK_EQ_INT(o.status, ASOCK_SMTP_STATUS_GENERAL_FAILURE);
    CHECK(!o.cancelled);
    CHECK(took >= timeout - 20);
    CHECK(took < timeout + (under_valgrind() ? 10000 : 3000));
    if (!(took >= timeout - 20 && took < timeout + (under_valgrind() ? 10000 : 3000)))
        fprintf(stderr, "    the timeout came after %" PRId64 " ms (client timeout %d ms)\n", took, timeout);
    CHECK_EQ_INT(fs_conn_count(s), 1);
    CHECK(fs_wait_peer_closed(s, 0)); /* the client gave the connection up */
    sc_finish(c, s);
    CHECK_EQ_INT(sc_calls(&r), 1);
    CHECK_OK(asock_mail_message_free(m));
    sc_rec_destroy(&r);
    fs_free(s);
}

TEST(garbage_greeting_is_a_protocol_error) {
    static const char tls_hello[] = "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n"; /* TLS bytes */
    static const struct {
        const char *bytes;
        size_t len;
    } garbage[] = {
        {"hello there, I am not an SMTP server\r\n", 0},
        {"22O typo in the code\r\n", 0},
        {"999 code out of range\r\n", 0},
        {"220-first line\r\n221 a different code on the last line\r\n", 0},
        {tls_hello, sizeof tls_hello - 1},
    };
    for (size_t i = 0; i < sizeof garbage / sizeof garbage[0]; i++) {
        fs_server *s = fs_new();
        s->greeting = garbage[i].bytes;
        s->greeting_len = garbage[i].len;
        sc_outcome o;
        if (one_send(s, &o, 0)) {
            CHECK_ERR(o.error, ASOCK_E_SMTP_PROTOCOL);
            CHECK_EQ_INT(o.status, ASOCK_SMTP_STATUS_GENERAL_FAILURE);
            if (o.error != ASOCK_E_SMTP_PROTOCOL)
                fprintf(stderr, "    garbage greeting #%zu: %s\n", i, o.message);
        }
        CHECK(!fs_rx_has(s, "MAIL"));
        fs_free(s);
    }
}

/* Garbage in the middle of a session: after a good greeting, EHLO gets it. */
static fs_action garbage_ehlo_hook(fs_server *s, fs_conn *c, const char *line, sh_buf *reply) {
    (void)s;
    (void)c;
    if (line != NULL && fs_verb(line, "EHLO")) {
        sh_buf_adds(reply, "250-fake.test\r\nthis is not a reply line\r\n250 SIZE\r\n");
        return FS_REPLY;
    }
    return FS_DEFAULT;
}

TEST(garbage_reply_to_ehlo_is_a_protocol_error) {
    fs_server *s = fs_new();
    s->hook = garbage_ehlo_hook;
    sc_outcome o;
    if (one_send(s, &o, 0))
        CHECK_ERR(o.error, ASOCK_E_SMTP_PROTOCOL);
    CHECK(!fs_rx_has(s, "MAIL"));
    fs_free(s);
}

TEST(oversized_reply_line_is_a_protocol_error) {
    for (int terminated = 0; terminated < 2; terminated++) {
        /* "220 xxxx…" of 5000 bytes, with and without its CRLF. */
        size_t len = 5000;
        char *g = malloc(len + 3);
        REQUIRE(g != NULL);
        memcpy(g, "220 ", 4);
        memset(g + 4, 'x', len - 4);
        g[len] = '\0';
        if (terminated)
            strcat(g, "\r\n");
        fs_server *s = fs_new();
        s->greeting = g;
        sc_outcome o;
        if (one_send(s, &o, 0))
            CHECK_ERR(o.error, ASOCK_E_SMTP_PROTOCOL);
        CHECK(!fs_rx_has(s, "MAIL"));
        fs_free(s);
        free(g);
    }
}

TEST(server_closing_mid_data_is_smtp_with_connection_reset) {
    fs_server *s = fs_new();
    s->close_mid_data = true;
    sc_outcome o;
    if (one_send(s, &o, 0)) {
        CHECK_ERR(o.error, ASOCK_E_SMTP);
        CHECK_ERR(o.socket_error, ASOCK_CONNECTION_RESET);
        CHECK_EQ_INT(o.status, ASOCK_SMTP_STATUS_GENERAL_FAILURE);
    }
    fs_lock(s);
    CHECK_EQ_INT(s->conns[0].n_data, 1);
    CHECK_EQ_INT(s->messages, 0);
    CHECK(s->conns[0].server_closed);
    fs_unlock(s);
    CHECK_EQ_INT(fs_conn_count(s), 1); /* no retry of a send the server saw data of */
    fs_free(s);
}

/* ---- STARTTLS, EHLO/HELO, AUTH ------------------------------------------------------ */

TEST(tls_required_without_starttls_offered_fails_before_mail) {
    for (int how = 0; how < 2; how++) {
        fs_server *s = fs_new();
        s->caps[0] = "PIPELINING";
        s->caps[1] = "8BITMIME";
        REQUIRE(fs_start(s));
        sc_rec r;
        sc_rec_init(&r);
        asock_smtp_client c;
        REQUIRE(sc_client_new(s, &r, &c));
        if (how == 0)
            CHECK_OK(asock_smtp_client_set_enable_ssl(c, true));
        else
            CHECK_OK(asock_smtp_client_set_security(c, ASOCK_SMTP_SECURITY_STARTTLS));
        asock_mail_message m = sc_message("a@x.test", "b@y.test");
        sc_outcome o;
        if (sc_run(c, &r, m, NULL, &o)) {
            CHECK_ERR(o.error, ASOCK_E_SMTP_STARTTLS_UNAVAILABLE);
            CHECK(!o.cancelled);
        }
        CHECK(fs_rx_has(s, "EHLO "));
        CHECK(!fs_rx_has(s, "STARTTLS"));
        CHECK(!fs_rx_has(s, "MAIL"));
        CHECK(!fs_rx_has(s, "RCPT"));
        sc_finish(c, s);
        CHECK_OK(asock_mail_message_free(m));
        sc_rec_destroy(&r);
        fs_free(s);
    }
}

/* STARTTLS offered but refused (454): a client that requires TLS must not
 * go on in plaintext. */
TEST(tls_required_and_starttls_refused_fails_before_mail) {
    fs_server *s = fs_new();
    s->caps[0] = "STARTTLS";
    s->caps[1] = "AUTH PLAIN";
    REQUIRE(fs_start(s));
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    REQUIRE(sc_client_new(s, &r, &c));
    CHECK_OK(asock_smtp_client_set_enable_ssl(c, true));
    CHECK_OK(asock_smtp_client_set_credentials(c, "user", "pass"));
    asock_mail_message m = sc_message("a@x.test", "b@y.test");
    sc_outcome o;
    if (sc_run(c, &r, m, NULL, &o)) {
        CHECK(o.error == ASOCK_E_SMTP_TLS || o.error == ASOCK_E_SMTP_STARTTLS_UNAVAILABLE);
        if (!(o.error == ASOCK_E_SMTP_TLS || o.error == ASOCK_E_SMTP_STARTTLS_UNAVAILABLE))
            fprintf(stderr, "    error %d %s: %s\n", (int)o.error, asock_error_name(o.error), o.message);
        CHECK_EQ_INT(o.status, 454);
    }
    CHECK(fs_rx_has(s, "STARTTLS\r\n"));
    CHECK(!fs_rx_has(s, "AUTH"));
    CHECK(!fs_rx_has(s, "MAIL"));
    sc_finish(c, s);
    CHECK_OK(asock_mail_message_free(m));
    sc_rec_destroy(&r);
    fs_free(s);
}

TEST(ehlo_refused_falls_back_to_helo) {
    static const int codes[] = {500, 502};
    for (size_t i = 0; i < 2; i++) {
        fs_server *s = fs_new();
        s->ehlo_code = codes[i];
        sc_outcome o;
        if (one_send(s, &o, 0)) {
            CHECK_OK(o.error);
            CHECK_EQ_INT(o.status, 250);
        }
        static const char want[] = "EHLO [127.0.0.1]\nHELO [127.0.0.1]\nMAIL FROM:<a@x.test>\n";
        char *cmds = fs_commands(s, 0);
        CHECK(strncmp(cmds, want, strlen(want)) == 0);
        if (strncmp(cmds, want, strlen(want)) != 0)
            fprintf(stderr, "    commands:\n%s", cmds);
        free(cmds);
        fs_free(s);
    }
}

TEST(credentials_without_tls_are_refused_and_never_sent) {
    fs_server *s = fs_new();
    s->caps[0] = "AUTH PLAIN LOGIN";
    REQUIRE(fs_start(s));
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    REQUIRE(sc_client_new(s, &r, &c));
    CHECK_OK(asock_smtp_client_set_credentials(c, "user", "pass"));
    asock_mail_message m = sc_message("a@x.test", "b@y.test");
    sc_outcome o;
    if (sc_run(c, &r, m, NULL, &o)) {
        CHECK_ERR(o.error, ASOCK_E_SMTP_AUTHENTICATION);
        CHECK_EQ_INT(o.status, ASOCK_SMTP_STATUS_GENERAL_FAILURE);
    }
    CHECK(!fs_rx_has(s, "AUTH"));
    CHECK(!fs_rx_has(s, "AHVzZXIAcGFzcw=="));
    CHECK(!fs_rx_has(s, "MAIL"));
    sc_finish(c, s);
    CHECK_OK(asock_mail_message_free(m));
    sc_rec_destroy(&r);
    fs_free(s);
}

struct trace_log {
    pthread_mutex_t mu;
    sh_buf smtp; /* every "smtp" record, one a line */
    int other_categories;
};

static void on_trace(int32_t level, const char *category, const char *text, void *userdata) {
    (void)level;
    struct trace_log *t = userdata;
    pthread_mutex_lock(&t->mu);
    if (category != NULL && strcmp(category, "smtp") == 0) {
        sh_buf_adds(&t->smtp, text ? text : "(null)");
        sh_buf_adds(&t->smtp, "\n");
    } else {
        t->other_categories++;
    }
    pthread_mutex_unlock(&t->mu);
}

TEST(auth_plain_when_allowed_over_plaintext_and_the_trace_masks_the_secret) {
    fs_server *s = fs_new();
    s->caps[0] = "AUTH PLAIN LOGIN";
    s->caps[1] = "ENHANCEDSTATUSCODES";
    REQUIRE(fs_start(s));
    struct trace_log t;
    memset(&t, 0, sizeof t);
    pthread_mutex_init(&t.mu, NULL);
    REQUIRE_OK(asock_set_trace(on_trace, ASOCK_TRACE_INFO, &t));
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    REQUIRE(sc_client_new(s, &r, &c));
    CHECK_OK(asock_smtp_client_set_credentials(c, "user", "pass"));
    CHECK_OK(asock_smtp_client_set_allow_plaintext_auth(c, true));
    asock_mail_message m = sc_message("a@x.test", "b@y.test");
    sc_outcome o;
    if (sc_run(c, &r, m, NULL, &o)) {
        CHECK_OK(o.error);
        CHECK_EQ_INT(o.status, 250);
    }
    sc_finish(c, s);
    CHECK_OK(asock_set_trace(NULL, ASOCK_TRACE_OFF, NULL));

    char *cmds = fs_commands(s, 0);
    /* base64("\0user\0pass") */
    CHECK(strstr(cmds, "\nAUTH PLAIN AHVzZXIAcGFzcw==\nMAIL FROM:<a@x.test>\n") != NULL);
    if (strstr(cmds, "\nAUTH PLAIN AHVzZXIAcGFzcw==\nMAIL FROM:<a@x.test>\n") == NULL)
        fprintf(stderr, "    commands:\n%s", cmds);
    free(cmds);

    const char *log = sh_str(&t.smtp);
    CHECK(strstr(log, "C: EHLO [127.0.0.1]\n") != NULL);
    CHECK(strstr(log, "S: 220 fake.test ESMTP ready\n") != NULL);
    CHECK(strstr(log, "C: AUTH PLAIN ***\n") != NULL);
    CHECK(strstr(log, "S: 235 2.7.0 authentication successful\n") != NULL);
    CHECK(strstr(log, "C: MAIL FROM:<a@x.test>\n") != NULL);
    CHECK(strstr(log, "S: 250 2.0.0 queued as M1\n") != NULL);
    CHECK(strstr(log, "C: QUIT\n") != NULL);
    CHECK(strstr(log, "AHVzZXIAcGFzcw==") == NULL);
    CHECK(strstr(log, "pass") == NULL);
    if (strstr(log, "C: AUTH PLAIN ***\n") == NULL || strstr(log, "AHVzZXIAcGFzcw==") != NULL)
        fprintf(stderr, "    smtp trace:\n%s", log);
    sh_buf_free(&t.smtp);
    pthread_mutex_destroy(&t.mu);
    CHECK_OK(asock_mail_message_free(m));
    sc_rec_destroy(&r);
    fs_free(s);
}

TEST(auth_rejected_535_is_smtp_authentication_with_status_535) {
    fs_server *s = fs_new();
    s->caps[0] = "AUTH PLAIN";
    s->auth_code = 535;
    REQUIRE(fs_start(s));
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    REQUIRE(sc_client_new(s, &r, &c));
    CHECK_OK(asock_smtp_client_set_credentials(c, "user", "wrong"));
    CHECK_OK(asock_smtp_client_set_allow_plaintext_auth(c, true));
    asock_mail_message m = sc_message("a@x.test", "b@y.test");
    sc_outcome o;
    if (sc_run(c, &r, m, NULL, &o)) {
        CHECK_ERR(o.error, ASOCK_E_SMTP_AUTHENTICATION);
        CHECK_EQ_INT(o.status, 535);
        CHECK(strstr(o.message, "535") != NULL);
    }
    CHECK(fs_rx_has(s, "AUTH PLAIN "));
    CHECK(!fs_rx_has(s, "MAIL"));
    sc_finish(c, s);
    CHECK_OK(asock_mail_message_free(m));
    sc_rec_destroy(&r);
    fs_free(s);
}

/* ---- the transaction -------------------------------------------------------------- */

TEST(sender_rejected_is_smtp_with_the_code_and_no_rcpt_or_data) {
    fs_server *s = fs_new();
    s->mail_code = 553;
    sc_outcome o;
    if (one_send(s, &o, 0)) {
        CHECK_ERR(o.error, ASOCK_E_SMTP);
        CHECK_EQ_INT(o.status, 553);
        CHECK(strstr(o.message, "553") != NULL);
        CHECK_EQ_INT(o.n_failed, 0);
    }
    CHECK(fs_rx_has(s, "MAIL FROM:<a@x.test>\r\n"));
    CHECK(!fs_rx_has(s, "RCPT"));
    CHECK(!fs_rx_has(s, "DATA"));
    fs_free(s);
}

TEST(size_limit_below_the_message_is_552_and_no_mail) {
    fs_server *s = fs_new();
    s->caps[0] = "SIZE 100";
    sc_outcome o;
    if (one_send(s, &o, 0)) {
        CHECK_ERR(o.error, ASOCK_E_SMTP);
        CHECK_EQ_INT(o.status, 552);
    }
    CHECK(fs_rx_has(s, "EHLO"));
    CHECK(!fs_rx_has(s, "MAIL"));
    fs_free(s);
}

TEST(mail_from_carries_size_when_size_is_offered) {
    fs_server *s = fs_new();
    s->caps[0] = "SIZE 10240000";
    sc_outcome o;
    if (one_send(s, &o, 0))
        CHECK_OK(o.error);
    char *cmds = fs_commands(s, 0);
    size_t payload_len = 0;
    char *payload = fs_message(s, 0, &payload_len);
    const char *p = strstr(cmds, "MAIL FROM:<a@x.test> SIZE=");
    CHECK(p != NULL);
    if (p != NULL) {
        long n = strtol(p + strlen("MAIL FROM:<a@x.test> SIZE="), NULL, 10);
        /* The message as rendered: the payload without its final ".\r\n"
         * (the body has no dots to stuff and ends in a line break). */
        CHECK_EQ_INT(n, (long)payload_len - 3);
    }
    /* No SIZE parameter without the extension: see the exact commands test. */
    free(payload);
    free(cmds);
    fs_free(s);
}

TEST(non_ascii_address_needs_smtputf8) {
    for (int offered = 0; offered < 2; offered++) {
        fs_server *s = fs_new();
        s->caps[0] = "8BITMIME";
        s->caps[1] = offered ? "SMTPUTF8" : "PIPELINING";
        REQUIRE(fs_start(s));
        sc_rec r;
        sc_rec_init(&r);
        asock_smtp_client c;
        REQUIRE(sc_client_new(s, &r, &c));
        asock_mail_message m = sc_message("a@x.test", NULL);
        REQUIRE_OK(asock_mail_message_add_to(m, "j\xC3\xBCrgen@b\xC3\xBC" "cher.test", NULL));
        sc_outcome o;
        if (sc_run(c, &r, m, NULL, &o)) {
            if (offered) {
                CHECK_OK(o.error);
                CHECK_EQ_INT(o.status, 250);
            } else {
                CHECK_ERR(o.error, ASOCK_E_NOT_SUPPORTED);
            }
        }
        if (offered) {
            char *cmds = fs_commands(s, 0);
            CHECK(strstr(cmds, "MAIL FROM:<a@x.test>") != NULL);
            const char *mail = strstr(cmds, "MAIL FROM:");
            const char *eol = mail ? strchr(mail, '\n') : NULL;
            const char *utf8 = mail ? strstr(mail, " SMTPUTF8") : NULL;
            CHECK(utf8 != NULL && eol != NULL && utf8 < eol);
            CHECK(strstr(cmds, "RCPT TO:<j\xC3\xBCrgen@b\xC3\xBC" "cher.test>") != NULL);
            free(cmds);
        } else {
            CHECK(!fs_rx_has(s, "MAIL"));
        }
        sc_finish(c, s);
        CHECK_OK(asock_mail_message_free(m));
        sc_rec_destroy(&r);
        fs_free(s);
    }
}

TEST(dsn_notify_goes_on_rcpt_only_when_the_server_offers_dsn) {
    for (int offered = 0; offered < 2; offered++) {
        fs_server *s = fs_new();
        s->caps[0] = offered ? "DSN" : "8BITMIME";
        REQUIRE(fs_start(s));
        sc_rec r;
        sc_rec_init(&r);
        asock_smtp_client c;
        REQUIRE(sc_client_new(s, &r, &c));
        asock_mail_message m = sc_message("a@x.test", "b@y.test");
        CHECK_OK(asock_mail_message_add_cc(m, "c@y.test", NULL));
        CHECK_OK(asock_mail_message_set_delivery_notification(m, ASOCK_DSN_ON_SUCCESS | ASOCK_DSN_ON_FAILURE));
        sc_outcome o;
        if (sc_run(c, &r, m, NULL, &o))
            CHECK_OK(o.error);
        if (offered) {
            CHECK(fs_rx_has(s, "\r\nRCPT TO:<b@y.test> NOTIFY=SUCCESS,FAILURE\r\n"));
            CHECK(fs_rx_has(s, "\r\nRCPT TO:<c@y.test> NOTIFY=SUCCESS,FAILURE\r\n"));
        } else {
            CHECK(fs_rx_has(s, "\r\nRCPT TO:<b@y.test>\r\n"));
            CHECK(fs_rx_has(s, "\r\nRCPT TO:<c@y.test>\r\n"));
            CHECK(!fs_rx_has(s, "NOTIFY"));
        }
        sc_finish(c, s);
        CHECK_OK(asock_mail_message_free(m));
        sc_rec_destroy(&r);
        fs_free(s);
    }
}

/* b@ accepted; c@ (To) and d@ (Cc) rejected with 550. */
static asock_mail_message three_recipients(void) {
    asock_mail_message m = sc_message("a@x.test", "b@y.test");
    CHECK_OK(asock_mail_message_add_to(m, "c@y.test", NULL));
    CHECK_OK(asock_mail_message_add_cc(m, "d@y.test", NULL));
    return m;
}

static void check_failed_c_and_d(const sc_outcome *o) {
    CHECK_EQ_INT(o->n_failed, 2);
    CHECK(!o->failed_null);
    if (o->n_failed == 2) {
        CHECK(strcmp(o->failed[0].address, "c@y.test") == 0);
        CHECK_EQ_INT(o->failed[0].status, 550);
        CHECK(strcmp(o->failed[0].response, "550 5.1.1 <c@y.test>: recipient rejected") == 0);
        CHECK(strcmp(o->failed[1].address, "d@y.test") == 0);
        CHECK_EQ_INT(o->failed[1].status, 550);
        CHECK(strcmp(o->failed[1].response, "550 5.1.1 <d@y.test>: recipient rejected") == 0);
        if (strcmp(o->failed[0].response, "550 5.1.1 <c@y.test>: recipient rejected") != 0)
            fprintf(stderr, "    failed[0].response: \"%s\"\n", o->failed[0].response);
    }
}

TEST(rejected_recipients_all_or_nothing_rset_and_never_data) {
    fs_server *s = fs_new();
    s->reject[0] = "c@y.test";
    s->reject[1] = "d@y.test";
    REQUIRE(fs_start(s));
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    REQUIRE(sc_client_new(s, &r, &c));
    asock_mail_message m = three_recipients();
    sc_outcome o;
    if (sc_run(c, &r, m, NULL, &o)) {
        CHECK_ERR(o.error, ASOCK_E_SMTP_FAILED_RECIPIENTS);
        CHECK_EQ_INT(o.status, 550);
        check_failed_c_and_d(&o);
    }
    char *cmds = fs_commands(s, 0);
    CHECK(strstr(cmds, "RCPT TO:<b@y.test>\nRCPT TO:<c@y.test>\nRCPT TO:<d@y.test>\nRSET\n") != NULL);
    CHECK(strstr(cmds, "DATA") == NULL);
    free(cmds);
    fs_lock(s);
    CHECK_EQ_INT(s->messages, 0);
    fs_unlock(s);
    sc_finish(c, s);
    CHECK_OK(asock_mail_message_free(m));
    sc_rec_destroy(&r);
    fs_free(s);
}

TEST(every_recipient_rejected_is_failed_recipients_and_never_data) {
    fs_server *s = fs_new();
    s->reject[0] = "b@y.test";
    sc_outcome o;
    if (one_send(s, &o, 0)) {
        CHECK_ERR(o.error, ASOCK_E_SMTP_FAILED_RECIPIENTS);
        CHECK_EQ_INT(o.status, 550);
        CHECK_EQ_INT(o.n_failed, 1);
        CHECK(strcmp(o.failed[0].address, "b@y.test") == 0);
    }
    CHECK(!fs_rx_has(s, "DATA"));
    fs_free(s);
}

TEST(rejected_recipients_deliver_to_accepted_sends_the_message) {
    fs_server *s = fs_new();
    s->reject[0] = "c@y.test";
    s->reject[1] = "d@y.test";
    REQUIRE(fs_start(s));
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    REQUIRE(sc_client_new(s, &r, &c));
    CHECK_OK(asock_smtp_client_set_recipient_policy(c, ASOCK_SMTP_RECIPIENTS_DELIVER_TO_ACCEPTED));
    asock_mail_message m = three_recipients();
    sc_outcome o;
    if (sc_run(c, &r, m, NULL, &o)) {
        CHECK_ERR(o.error, ASOCK_E_SMTP_FAILED_RECIPIENTS);
        CHECK_EQ_INT(o.status, 250);
        check_failed_c_and_d(&o);
    }
    fs_lock(s);
    CHECK_EQ_INT(s->messages, 1);
    CHECK(strstr(sh_str(&s->conns[0].message), "Hello from the C tests.") != NULL);
    fs_unlock(s);
    sc_finish(c, s);
    CHECK_OK(asock_mail_message_free(m));
    sc_rec_destroy(&r);
    fs_free(s);
}

TEST(success_exact_commands_and_the_data_payload) {
    fs_server *s = fs_new();
    s->caps[0] = "8BITMIME";
    s->caps[1] = "ENHANCEDSTATUSCODES";
    REQUIRE(fs_start(s));
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    REQUIRE(sc_client_new(s, &r, &c));
    asock_mail_message m = sc_message("a@x.test", "b@y.test");
    /* Leading dots, bare CR, a lone "." line and a smuggling attempt. */
    CHECK_OK(asock_mail_message_set_body(m, "line1\n.dot line\nbare\rcr\r\n..two\r\n.\r\nsmuggle\r.\rMAIL\nend",
                                         false));
    pthread_t loop_thread;
    REQUIRE(sh_flush_default_loop(&loop_thread));
    int token;
    sc_outcome o;
    REQUIRE(sc_run(c, &r, m, &token, &o));
    CHECK_OK(o.error);
    CHECK_EQ_INT(o.status, 250);
    CHECK_ERR(o.socket_error, ASOCK_OK);
    CHECK(!o.cancelled);
    CHECK(o.token == &token);
    CHECK(!o.message_null);
    CHECK(strstr(o.message, "250") != NULL);
    CHECK_EQ_INT(o.n_failed, 0);
    CHECK(o.failed_null);
    CHECK(pthread_equal(o.thread, loop_thread)); /* on the default loop's thread */
    CHECK_EQ_INT(o.client_id, c.id);

    char *cmds = fs_commands(s, 0);
    static const char want[] = "EHLO [127.0.0.1]\nMAIL FROM:<a@x.test>\nRCPT TO:<b@y.test>\nDATA\n";
    CHECK(strcmp(cmds, want) == 0);
    if (strcmp(cmds, want) != 0)
        fprintf(stderr, "    commands:\n%s", cmds);
    free(cmds);

    size_t len = 0;
    char *payload = fs_message(s, 0, &len);
    const char *body = strstr(payload, "\r\n\r\n");
    CHECK(body != NULL);
    static const char want_body[] = "\r\n\r\nline1\r\n"
                                    "..dot line\r\n"
                                    "bare\r\n"
                                    "cr\r\n"
                                    "...two\r\n"
                                    "..\r\n"
                                    "smuggle\r\n"
                                    "..\r\n"
                                    "MAIL\r\n"
                                    "end\r\n"
                                    ".\r\n";
    if (body != NULL) {
        CHECK(strcmp(body, want_body) == 0);
        if (strcmp(body, want_body) != 0)
            fprintf(stderr, "    body on the wire:\n%s", body);
    }
    CHECK(strstr(payload, "Subject: fake server test\r\n") != NULL);
    /* Every CR is followed by LF and every LF preceded by CR. */
    for (size_t i = 0; i < len; i++) {
        if (payload[i] == '\r' && (i + 1 == len || payload[i + 1] != '\n')) {
            CHECK(!"a bare CR in the payload");
            break;
        }
        if (payload[i] == '\n' && (i == 0 || payload[i - 1] != '\r')) {
            CHECK(!"a bare LF in the payload");
            break;
        }
    }
    CHECK_EQ_INT(sh_count(payload, "\r\n.\r\n"), 1); /* one terminator, at the end */
    free(payload);
    fs_lock(s);
    CHECK_EQ_INT(s->messages, 1);
    CHECK(s->conns[0].end_with_body); /* the final dot came with the end of the body */
    CHECK_EQ_INT(s->conns[0].n_quit, 0); /* the connection is kept for the next send */
    fs_unlock(s);

    sc_finish(c, s);
    CHECK_EQ_INT(fs_quit_count(s), 1); /* QUIT when freed */
    CHECK_EQ_INT(sc_calls(&r), 1);
    CHECK_EQ_INT(atomic_load(&sc_stray_calls), 0);
    CHECK_OK(asock_mail_message_free(m));
    sc_rec_destroy(&r);
    fs_free(s);
}

TEST(client_domain_is_the_ehlo_name) {
    fs_server *s = fs_new();
    REQUIRE(fs_start(s));
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    REQUIRE(sc_client_new(s, &r, &c));
    CHECK_OK(asock_smtp_client_set_client_domain(c, "client.example.test"));
    asock_mail_message m = sc_message("a@x.test", "b@y.test");
    sc_outcome o;
    if (sc_run(c, &r, m, NULL, &o))
        CHECK_OK(o.error);
    CHECK(fs_rx_has(s, "EHLO client.example.test\r\n"));
    sc_finish(c, s);
    CHECK_OK(asock_mail_message_free(m));
    sc_rec_destroy(&r);
    fs_free(s);
}

int main(void) {
    RUN(new_free_and_every_call_after_free_is_object_disposed);
    RUN(setters_check_their_arguments);
    RUN(trusted_ca_file_missing_is_io_without_a_certificate_is_format);
    RUN(delivery_notification_flags_are_checked);
    RUN(send_async_refusals_start_nothing_and_call_nothing_back);
    RUN(every_setter_and_a_second_send_are_refused_while_a_send_is_in_progress);
    RUN(pickup_directory_gets_one_eml_file_with_the_envelope_first);
    RUN(pickup_directory_removed_before_the_send_completes_with_io);
    RUN(connection_refused_is_smtp_connect_with_the_socket_error);
    RUN(greeting_421_is_smtp_connect_with_status_421);
    RUN(other_non_220_greeting_is_smtp_connect_with_its_code);
    RUN(silent_server_times_out_after_about_the_client_timeout);
    RUN(garbage_greeting_is_a_protocol_error);
    RUN(garbage_reply_to_ehlo_is_a_protocol_error);
    RUN(oversized_reply_line_is_a_protocol_error);
    RUN(server_closing_mid_data_is_smtp_with_connection_reset);
    RUN(tls_required_without_starttls_offered_fails_before_mail);
    RUN(tls_required_and_starttls_refused_fails_before_mail);
    RUN(ehlo_refused_falls_back_to_helo);
    RUN(credentials_without_tls_are_refused_and_never_sent);
    RUN(auth_plain_when_allowed_over_plaintext_and_the_trace_masks_the_secret);
    RUN(auth_rejected_535_is_smtp_authentication_with_status_535);
    RUN(sender_rejected_is_smtp_with_the_code_and_no_rcpt_or_data);
    RUN(size_limit_below_the_message_is_552_and_no_mail);
    RUN(mail_from_carries_size_when_size_is_offered);
    RUN(non_ascii_address_needs_smtputf8);
    RUN(dsn_notify_goes_on_rcpt_only_when_the_server_offers_dsn);
    RUN(rejected_recipients_all_or_nothing_rset_and_never_data);
    RUN(every_recipient_rejected_is_failed_recipients_and_never_data);
    RUN(rejected_recipients_deliver_to_accepted_sends_the_message);
    RUN(success_exact_commands_and_the_data_payload);
    RUN(client_domain_is_the_ehlo_name);
    RUN(no_stray_send_completed_calls);
    return harness_finish();
}
