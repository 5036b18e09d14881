/*
 * test_mail_message.c — section 7, the message half: every asock_mail_message_*
 * function, each validation code (header injection → Argument, syntax →
 * Format), and the rendered message: headers present, Bcc absent, non-ASCII
 * encoded, CRLF lines within 998 octets, the attachment intact in base64.
 */
#include "harness.h"

#include <strings.h>

#include <stdlib.h>
#include <string.h>

/* Renders `m` into a fresh NUL-terminated buffer (caller frees). */
static char *render(asock_mail_message m, size_t *out_size) {
    size_t need = 0;
    if (asock_mail_message_render(m, NULL, 0, &need) != ASOCK_OK || need == 0)
        return NULL;
    size_t cap = need + 256; /* a new Message-ID/Date may differ in length */
    char *buf = malloc(cap + 1);
    size_t got = 0;
    if (!buf || asock_mail_message_render(m, (uint8_t *)buf, cap, &got) != ASOCK_OK) {
        free(buf);
        return NULL;
    }
    buf[got] = 0;
    if (out_size)
        *out_size = got;
    return buf;
}

static asock_mail_message sample(void) {
    asock_mail_message m = {0};
    if (asock_mail_message_new(&m) != ASOCK_OK)
        return m;
    asock_mail_message_set_from(m, "alice@example.com", "Alice \xC3\x84rger");
    asock_mail_message_add_to(m, "bob@example.com", "Bob");
    asock_mail_message_add_cc(m, "carol@example.com", NULL);
    asock_mail_message_add_bcc(m, "hidden@example.com", NULL);
    asock_mail_message_set_subject(m, "Gr\xC3\xBC\xC3\x9F" "e");
    asock_mail_message_set_body(m, "Hello\n.leading dot\n", false);
    return m;
}

TEST(new_and_free) {
    asock_mail_message m;
    CHECK_ERR(asock_mail_message_new(NULL), ASOCK_E_ARGUMENT_NULL);
    REQUIRE_OK(asock_mail_message_new(&m));
    CHECK(m.id != 0);
    CHECK_OK(asock_mail_message_free(m));
    CHECK_ERR(asock_mail_message_free(m), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_mail_message_set_subject(m, "x"), ASOCK_E_OBJECT_DISPOSED);
    CHECK_OK(asock_mail_message_free((asock_mail_message){0}));
    CHECK_ERR(asock_mail_message_set_subject((asock_mail_message){0}, "x"), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_mail_message_set_subject((asock_mail_message){0x123456789ull}, "x"), ASOCK_E_ARGUMENT);
}

TEST(addresses_are_checked_when_set) {
    asock_mail_message m;
    REQUIRE_OK(asock_mail_message_new(&m));
    typedef asock_error (*setter)(asock_mail_message, const char *, const char *);
    setter setters[] = {asock_mail_message_set_from, asock_mail_message_set_sender, asock_mail_message_add_to,
                        asock_mail_message_add_cc, asock_mail_message_add_bcc, asock_mail_message_add_reply_to};
    for (size_t i = 0; i < sizeof setters / sizeof setters[0]; i++) {
        CHECK_OK(setters[i](m, "ok@example.com", NULL));
        CHECK_OK(setters[i](m, "ok@example.com", "Name"));
        CHECK_ERR(setters[i](m, NULL, NULL), ASOCK_E_ARGUMENT_NULL);
        /* injection: CR, LF or NUL never reaches the wire */
        CHECK_ERR(setters[i](m, "a@example.com\r\nRCPT TO:<x@y.z>", NULL), ASOCK_E_ARGUMENT);
        CHECK_ERR(setters[i](m, "a@example.com", "Eve\nBcc: x@y.z"), ASOCK_E_ARGUMENT);
        CHECK_ERR(setters[i](m, "a@example.com", "Eve\r"), ASOCK_E_ARGUMENT);
        /* syntax */
        CHECK_ERR(setters[i](m, "not an address", NULL), ASOCK_E_FORMAT);
        CHECK_ERR(setters[i](m, "", NULL), ASOCK_E_FORMAT);
        CHECK_ERR(setters[i](m, "a@", NULL), ASOCK_E_FORMAT);
        CHECK_ERR(setters[i](m, "Alice <a@example.com>", NULL), ASOCK_E_FORMAT);
        CHECK_ERR(setters[i](m, "\xff\xfe@example.com", NULL), ASOCK_E_ARGUMENT); /* not UTF-8 */
    }
    CHECK_OK(asock_mail_message_free(m));
}

TEST(subject_body_headers_views_attachments_priority) {
    asock_mail_message m;
    REQUIRE_OK(asock_mail_message_new(&m));
    CHECK_OK(asock_mail_message_set_subject(m, "fine"));
    CHECK_ERR(asock_mail_message_set_subject(m, "a\r\nBcc: x@y.z"), ASOCK_E_ARGUMENT);
    CHECK_ERR(asock_mail_message_set_subject(m, NULL), ASOCK_E_ARGUMENT_NULL);
    CHECK_OK(asock_mail_message_set_body(m, "<p>hi</p>", true));
    CHECK_ERR(asock_mail_message_set_body(m, NULL, false), ASOCK_E_ARGUMENT_NULL);
    CHECK_OK(asock_mail_message_add_header(m, "X-Campaign", "42"));
    CHECK_ERR(asock_mail_message_add_header(m, "X-Bad", "v\nBcc: x@y.z"), ASOCK_E_ARGUMENT);
    CHECK_ERR(asock_mail_message_add_header(m, "Bcc", "x@y.z"), ASOCK_E_ARGUMENT);
    CHECK_ERR(asock_mail_message_add_header(m, "content-type", "text/x"), ASOCK_E_ARGUMENT);
    CHECK_ERR(asock_mail_message_add_header(m, "Bad Name", "v"), ASOCK_E_FORMAT);
    CHECK_ERR(asock_mail_message_add_header(m, "Colon:", "v"), ASOCK_E_FORMAT);
    CHECK_ERR(asock_mail_message_add_header(m, NULL, "v"), ASOCK_E_ARGUMENT_NULL);
    CHECK_OK(asock_mail_message_add_alternate_view(m, "plain words", "text/plain"));
    CHECK_ERR(asock_mail_message_add_alternate_view(m, "x", "plain"), ASOCK_E_FORMAT);
    CHECK_ERR(asock_mail_message_add_alternate_view(m, "x", "text/plain\r\nX: y"), ASOCK_E_ARGUMENT);
    static const uint8_t data[4] = {1, 2, 3, 255};
    CHECK_OK(asock_mail_message_add_attachment(m, "a.bin", "application/octet-stream", data, sizeof data));
    CHECK_OK(asock_mail_message_add_attachment(m, "empty.txt", "text/plain", NULL, 0));
    CHECK_ERR(asock_mail_message_add_attachment(m, "a.bin", "application/octet-stream", NULL, 4), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_mail_message_add_attachment(m, "", "text/plain", data, 1), ASOCK_E_ARGUMENT);
    CHECK_ERR(asock_mail_message_add_attachment(m, "a\r\n.bin", "text/plain", data, 1), ASOCK_E_ARGUMENT);
    CHECK_OK(asock_mail_message_set_priority(m, ASOCK_MAIL_PRIORITY_HIGH));
    CHECK_ERR(asock_mail_message_set_priority(m, 3), ASOCK_E_ARGUMENT);
    CHECK_ERR(asock_mail_message_set_priority(m, -1), ASOCK_E_ARGUMENT);
    char *text = render(m, NULL);
    REQUIRE(text != NULL);
    CHECK(strstr(text, "X-Campaign: 42\r\n") != NULL);
    CHECK(strstr(text, "X-Priority: 1\r\n") != NULL);
    CHECK(strstr(text, "multipart/mixed") != NULL);
    CHECK(strstr(text, "multipart/alternative") != NULL);
    CHECK(strstr(text, "text/html") != NULL);
    CHECK(strstr(text, "filename=\"a.bin\"") != NULL);
    CHECK(strstr(text, "AQID/w==") != NULL); /* {1,2,3,255} in base64 */
    free(text);
    CHECK_OK(asock_mail_message_free(m));
}

TEST(rendering_headers_bcc_encoding_and_lines) {
    asock_mail_message m = sample();
    REQUIRE(m.id != 0);
    size_t size = 0;
    char *text = render(m, &size);
    REQUIRE(text != NULL);
    CHECK_EQ_INT((int)strlen(text), (int)size);
    CHECK(strstr(text, "From: =?utf-8?") != NULL);    /* Alice Ärger, RFC 2047 */
    CHECK(strstr(text, "Subject: =?utf-8?") != NULL); /* Grüße */
    CHECK(strstr(text, "<alice@example.com>") != NULL);
    CHECK(strstr(text, "\"Bob\" <bob@example.com>") != NULL);
    CHECK(strstr(text, "carol@example.com") != NULL);
    CHECK(strstr(text, "\r\nDate: ") != NULL);
    CHECK(strstr(text, "\r\nMessage-ID: <") != NULL);
    CHECK(strstr(text, "MIME-Version: 1.0\r\n") != NULL);
    CHECK(strstr(text, "hidden@example.com") == NULL); /* never Bcc */
    /* No Bcc header line. (Not a substring test: Message-ID and MIME
     * boundaries are random hex, which can spell "bcc".) */
    bool bcc_line = false;
    for (const char *l = text; l != NULL; l = strchr(l, '\n'), l = l ? l + 1 : NULL)
        bcc_line |= strncasecmp(l, "bcc:", 4) == 0;
    CHECK(!bcc_line);
    /* CRLF only, every line within 998 octets */
    size_t line = 0;
    for (size_t i = 0; i < size; i++) {
        if (text[i] == '\n') {
            CHECK(i > 0 && text[i - 1] == '\r');
            line = 0;
        } else if (++line > 999) {
            CHECK(!"a line longer than 998 octets");
            break;
        }
    }
    free(text);
    CHECK_OK(asock_mail_message_free(m));
}

TEST(render_buffer_rules) {
    asock_mail_message m = sample();
    size_t need = 7, got = 7;
    char small[16];
    CHECK_ERR(asock_mail_message_render(m, NULL, 0, NULL), ASOCK_E_ARGUMENT_NULL);
    REQUIRE_OK(asock_mail_message_render(m, NULL, 0, &need));
    CHECK(need > 100);
    CHECK_ERR(asock_mail_message_render(m, (uint8_t *)small, sizeof small, &got), ASOCK_E_ARGUMENT_OUT_OF_RANGE);
    CHECK_EQ_INT((int)got, 7); /* out pointers are written only on success */
    CHECK_ERR(asock_mail_message_render(m, NULL, 100, &got), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_mail_message_render((asock_mail_message){0}, NULL, 0, &got), ASOCK_E_ARGUMENT_NULL);
    /* A long line and 8-bit text still render within the limits. */
    char *body = malloc(6002);
    REQUIRE(body != NULL);
    memset(body, 'x', 6000);
    body[6000] = '\n';
    body[6001] = 0;
    CHECK_OK(asock_mail_message_set_body(m, body, false));
    free(body);
    size_t size = 0;
    char *text = render(m, &size);
    REQUIRE(text != NULL);
    size_t line = 0, longest = 0;
    for (size_t i = 0; i < size; i++) {
        line = text[i] == '\n' ? 0 : line + 1;
        if (line > longest)
            longest = line;
    }
    CHECK(longest <= 999);
    free(text);
    CHECK_OK(asock_mail_message_free(m));
}

int main(void) {
    RUN(new_and_free);
    RUN(addresses_are_checked_when_set);
    RUN(subject_body_headers_views_attachments_priority);
    RUN(rendering_headers_bcc_encoding_and_lines);
    RUN(render_buffer_rules);
    return harness_finish();
}
