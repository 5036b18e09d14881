/*
 * asock-sendmail: a command-line mail sender on asock's SmtpClient.
 *
 * Builds one message from the options (asock_mail_message_*), then sends it
 * with asock_smtp_client_send_async (.NET SmtpClient.SendAsync) on the
 * default loop: the SendCompleted callback runs on the loop's thread, copies
 * what it was handed and signals a condition variable the main thread waits
 * on, with a deadline. --count N sends N copies one after the other through
 * the same client, so they share one connection.
 *
 *   asock-sendmail [options] --from ADDR --to ADDR [--to ADDR ...]
 *
 * Without --server the message is written to a pickup directory as a .eml
 * file instead. Run with --help for every option.
 *
 * Prints one line per message, "sent: <code> <reply>" or
 * "failed: <error> (status <code>): <reason>" followed by each refused
 * recipient. Exit status: 0 every send succeeded, 1 a send or the setup
 * failed, 2 the command line is wrong.
 */
#ifndef _GNU_SOURCE
#define _POSIX_C_SOURCE 200809L /* strdup, pthread_condattr_setclock, clock_gettime */
#endif

#include <asock.h>

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PROG "asock-sendmail"
#define PASSWORD_VARIABLE "ASOCK_SMTP_PASSWORD"
/* The library bounds every wait of a send by the client timeout; this margin
 * on top of it is the main thread's backstop, never the normal way out. */
#ifndef DEADLINE_MARGIN_MS
#define DEADLINE_MARGIN_MS 5000
#endif
#define CANCEL_GRACE_MS 5000
#define MAX_COUNT 1000

static const char usage_text[] =
    "usage: " PROG " [options] --from ADDR --to ADDR [--to ADDR ...]\n"
    "\n"
    "Delivery (one of):\n"
    "  --server HOST[:PORT]   send over the network (default port 25; 465 means\n"
    "                         implicit TLS with --security auto); IPv6 as [::1]:25\n"
    "  --pickup DIR           write a .eml file to DIR, an absolute path (the\n"
    "                         default without --server, DIR then the current one)\n"
    "Network options (need --server):\n"
    "  --security MODE        auto (default), none, starttls, starttls-optional,\n"
    "                         implicit\n"
    "  --user NAME            authenticate as NAME; the password is read from the\n"
    "                         environment variable " PASSWORD_VARIABLE "\n"
    "  --allow-plaintext-auth allow authenticating over a connection without TLS\n"
    "  --ca-file PEM          trust the CA certificates in PEM too\n"
    "Message:\n"
    "  --from ADDR            sender (required)   --from-name NAME  its display name\n"
    "  --to ADDR              recipient (required, repeatable)\n"
    "  --cc ADDR, --bcc ADDR, --reply-to ADDR     (repeatable; Bcc is never shown)\n"
    "  --subject TEXT         (default: \"Test message from " PROG "\")\n"
    "  --body-file FILE       the body, UTF-8; '-' reads standard input (default: a\n"
    "                         short test text)\n"
    "  --html                 the body is HTML\n"
    "  --attach FILE[:TYPE]   attach FILE (named by its base name) as media type\n"
    "                         TYPE, default application/octet-stream (repeatable)\n"
    "Sending:\n"
    "  --timeout MS           bound every wait of a send (default 100000)\n"
    "  --count N              send N copies over one connection (default 1)\n"
    "  --trace                trace the SMTP session to standard error\n"
    "  -h, --help             show this help\n"
    "\n"
    "Exit status: 0 every send succeeded, 1 a send or the setup failed, 2 usage.\n";

/* ---- the command line ------------------------------------------------------ */

struct list {
    const char **items; /* pointers into argv */
    int n;
};

struct options {
    const char *server, *pickup, *security, *user, *ca_file;
    const char *from, *from_name, *subject, *body_file, *timeout, *count;
    bool allow_plaintext_auth, html, trace, help;
    struct list to, cc, bcc, reply_to, attach;
};

/* What the command line means, once checked. */
struct settings {
    char *host; /* NULL: pickup delivery */
    int32_t port;
    int32_t security; /* -1: not given */
    char *pickup_dir;
    int32_t timeout_ms; /* 0: the library's default */
    int count;
    const char *password;
};

static int usage_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs(PROG ": ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nTry '" PROG " --help' for more information.\n", stderr);
    return 2;
}

/* An asock call that failed: its .NET error name and this thread's detail. */
static int report(const char *what, asock_error e) {
    char msg[512];
    asock_error_message(msg, sizeof msg);
    fprintf(stderr, PROG ": %s: %s (%d): %s\n", what, asock_error_name(e), (int)e, msg);
    return 1;
}

enum kind { FLAG, VALUE, REPEATED };

struct option_spec {
    const char *name;
    enum kind kind;
    size_t offset; /* of a bool, a const char * or a struct list in struct options */
};

#define SPEC(name, kind, field) {name, kind, offsetof(struct options, field)}
static const struct option_spec specs[] = {
    SPEC("--server", VALUE, server),
    SPEC("--pickup", VALUE, pickup),
    SPEC("--security", VALUE, security),
    SPEC("--user", VALUE, user),
    SPEC("--allow-plaintext-auth", FLAG, allow_plaintext_auth),
    SPEC("--ca-file", VALUE, ca_file),
    SPEC("--from", VALUE, from),
    SPEC("--from-name", VALUE, from_name),
    SPEC("--to", REPEATED, to),
    SPEC("--cc", REPEATED, cc),
    SPEC("--bcc", REPEATED, bcc),
    SPEC("--reply-to", REPEATED, reply_to),
    SPEC("--subject", VALUE, subject),
    SPEC("--body-file", VALUE, body_file),
    SPEC("--html", FLAG, html),
    SPEC("--attach", REPEATED, attach),
    SPEC("--timeout", VALUE, timeout),
    SPEC("--count", VALUE, count),
    SPEC("--trace", FLAG, trace),
    SPEC("--help", FLAG, help),
    SPEC("-h", FLAG, help),
};

/* Reads argv into *o. Lists get room for every argument, so adding never
 * overflows; free them with free_options. Returns 0 or a usage error's 2. */
static int parse_options(int argc, char **argv, struct options *o) {
    struct list *lists[] = {&o->to, &o->cc, &o->bcc, &o->reply_to, &o->attach};
    for (size_t k = 0; k < sizeof lists / sizeof lists[0]; k++) {
        lists[k]->items = calloc((size_t)argc + 1, sizeof *lists[k]->items);
        if (!lists[k]->items) {
            fprintf(stderr, PROG ": out of memory\n");
            return 1;
        }
    }
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (arg[0] != '-' || arg[1] == '\0')
            return usage_error("unexpected argument '%s' (every value follows its option)", arg);
        const char *eq = strncmp(arg, "--", 2) == 0 ? strchr(arg, '=') : NULL;
        size_t name_len = eq ? (size_t)(eq - arg) : strlen(arg);
        const struct option_spec *spec = NULL;
        for (size_t k = 0; k < sizeof specs / sizeof specs[0]; k++) {
            if (strlen(specs[k].name) == name_len && strncmp(specs[k].name, arg, name_len) == 0) {
                spec = &specs[k];
                break;
            }
        }
        if (!spec)
            return usage_error("unknown option '%.*s'", (int)name_len, arg);
        char *field = (char *)o + spec->offset;
        if (spec->kind == FLAG) {
            if (eq)
                return usage_error("option '%s' takes no value", spec->name);
            *(bool *)field = true;
            continue;
        }
        const char *value = eq ? eq + 1 : NULL;
        if (!value) {
            if (i + 1 >= argc)
                return usage_error("option '%s' needs a value", spec->name);
            value = argv[++i];
        }
        if (spec->kind == REPEATED) {
            struct list *l = (struct list *)field;
            l->items[l->n++] = value;
        } else {
            const char **slot = (const char **)field;
            if (*slot)
                return usage_error("option '%s' given twice", spec->name);
            *slot = value;
        }
    }
    return 0;
}

static void free_options(struct options *o) {
    free(o->to.items);
    free(o->cc.items);
    free(o->bcc.items);
    free(o->reply_to.items);
    free(o->attach.items);
}

/* A decimal integer in [min, max], nothing else. */
static bool parse_int(const char *text, long min, long max, long *out) {
    if (!text || *text < '0' || *text > '9')
        return false;
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return false;
    *out = v;
    return true;
}

/* HOST, HOST:PORT, [IPV6] or [IPV6]:PORT; a bare IPv6 literal (two colons
 * or more) has no port. The host is malloc'd. */
static int parse_server(const char *text, char **host, int32_t *port) {
    const char *h = text, *p = NULL;
    size_t h_len;
    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (!close || (close[1] != '\0' && close[1] != ':'))
            return usage_error("--server '%s': expected [IPV6] or [IPV6]:PORT", text);
        h = text + 1;
        h_len = (size_t)(close - h);
        if (close[1] == ':')
            p = close + 2;
    } else {
        const char *colon = strchr(text, ':');
        if (colon && !strchr(colon + 1, ':')) {
            h_len = (size_t)(colon - text);
            p = colon + 1;
        } else {
            h_len = strlen(text);
        }
    }
    if (h_len == 0)
        return usage_error("--server '%s': no host", text);
    long v = 25;
    if (p && !parse_int(p, 1, 65535, &v))
        return usage_error("--server '%s': the port must be a number from 1 to 65535", text);
    *host = malloc(h_len + 1);
    if (!*host) {
        fprintf(stderr, PROG ": out of memory\n");
        return 1;
    }
    memcpy(*host, h, h_len);
    (*host)[h_len] = '\0';
    *port = (int32_t)v;
    return 0;
}

static int parse_security(const char *text, int32_t *out) {
    static const struct {
        const char *name;
        int32_t mode;
    } modes[] = {
        {"auto", ASOCK_SMTP_SECURITY_AUTO},
        {"none", ASOCK_SMTP_SECURITY_NONE},
        {"starttls", ASOCK_SMTP_SECURITY_STARTTLS},
        {"starttls-optional", ASOCK_SMTP_SECURITY_STARTTLS_WHEN_AVAILABLE},
        {"implicit", ASOCK_SMTP_SECURITY_IMPLICIT_TLS},
    };
    for (size_t k = 0; k < sizeof modes / sizeof modes[0]; k++) {
        if (strcmp(text, modes[k].name) == 0) {
            *out = modes[k].mode;
            return 0;
        }
    }
    return usage_error("--security '%s': expected auto, none, starttls, starttls-optional or implicit", text);
}

/* Checks the options together and fills *s (its strings are malloc'd). */
static int check_options(const struct options *o, struct settings *s) {
    s->security = -1;
    s->count = 1;
    if (!o->from)
        return usage_error("--from is required");
    if (o->to.n == 0)
        return usage_error("at least one --to is required");
    if (o->server && o->pickup)
        return usage_error("--server and --pickup exclude each other");
    if (!o->server) {
        const char *network_only = o->security ? "--security"
                                   : o->user   ? "--user"
                                   : o->ca_file ? "--ca-file"
                                   : o->allow_plaintext_auth ? "--allow-plaintext-auth"
                                                              : NULL;
        if (network_only)
            return usage_error("%s needs --server (this send goes to a pickup directory)", network_only);
    }
    int rc;
    if (o->server && (rc = parse_server(o->server, &s->host, &s->port)) != 0)
        return rc;
    if (o->security && (rc = parse_security(o->security, &s->security)) != 0)
        return rc;
    if (o->user) {
        s->password = getenv(PASSWORD_VARIABLE);
        if (!s->password)
            return usage_error("--user needs the password in the environment variable %s", PASSWORD_VARIABLE);
    }
    long v;
    if (o->timeout) {
        if (!parse_int(o->timeout, 1, (long)INT32_MAX - DEADLINE_MARGIN_MS, &v))
            return usage_error("--timeout '%s': expected milliseconds, 1 or more", o->timeout);
        s->timeout_ms = (int32_t)v;
    }
    if (o->count) {
        if (!parse_int(o->count, 1, MAX_COUNT, &v))
            return usage_error("--count '%s': expected a number from 1 to %d", o->count, MAX_COUNT);
        s->count = (int)v;
    }
    if (!o->server) {
        if (o->pickup) {
            if (o->pickup[0] != '/')
                return usage_error("--pickup '%s': the directory must be an absolute path", o->pickup);
            s->pickup_dir = strdup(o->pickup);
        } else {
            s->pickup_dir = getcwd(NULL, 0);
        }
        if (!s->pickup_dir) {
            perror(PROG ": the pickup directory");
            return 1;
        }
    }
    return 0;
}

/* ---- files ---------------------------------------------------------------- */

/* Reads a whole file ("-": standard input) into a malloc'd buffer with a NUL
 * after its `*len` bytes. Returns false after saying why. */
static bool read_file(const char *path, char **data, size_t *len) {
    bool is_stdin = strcmp(path, "-") == 0;
    FILE *f = is_stdin ? stdin : fopen(path, "rb");
    if (!f) {
        fprintf(stderr, PROG ": %s: %s\n", path, strerror(errno));
        return false;
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    bool ok = buf != NULL;
    while (ok) {
        if (cap - n < 2) {
            char *bigger = cap <= SIZE_MAX / 2 ? realloc(buf, cap * 2) : NULL;
            if (!bigger) {
                ok = false;
                break;
            }
            buf = bigger;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0)
            break;
    }
    if (!ok)
        fprintf(stderr, PROG ": %s: out of memory\n", path);
    else if (ferror(f)) {
        fprintf(stderr, PROG ": %s: %s\n", is_stdin ? "standard input" : path, strerror(errno));
        ok = false;
    }
    if (!is_stdin)
        fclose(f);
    if (!ok) {
        free(buf);
        return false;
    }
    buf[n] = '\0';
    *data = buf;
    *len = n;
    return true;
}

/* "type/subtype": one slash with something on either side, no blanks. */
static bool looks_like_media_type(const char *t) {
    const char *slash = strchr(t, '/');
    return slash && slash != t && slash[1] != '\0' && !strchr(slash + 1, '/') && !strpbrk(t, " \t:");
}

static int add_attachment(asock_mail_message m, const char *spec) {
    const char *type = "application/octet-stream";
    const char *colon = strrchr(spec, ':');
    size_t path_len = strlen(spec);
    if (colon && looks_like_media_type(colon + 1)) {
        type = colon + 1;
        path_len = (size_t)(colon - spec);
    }
    char *path = malloc(path_len + 1);
    if (!path) {
        fprintf(stderr, PROG ": out of memory\n");
        return 1;
    }
    memcpy(path, spec, path_len);
    path[path_len] = '\0';
    const char *name = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    int rc = 0;
    char *data;
    size_t len;
    if (path_len == 0 || *name == '\0') {
        rc = usage_error("--attach '%s': expected FILE or FILE:media/type", spec);
    } else if (!read_file(path, &data, &len)) {
        rc = 1;
    } else {
        asock_error e = asock_mail_message_add_attachment(m, name, type, (const uint8_t *)data, len);
        if (e != ASOCK_OK) {
            char what[64 + 256];
            snprintf(what, sizeof what, "--attach '%.256s'", spec);
            rc = report(what, e);
        }
        free(data);
    }
    free(path);
    return rc;
}

/* ---- the message ------------------------------------------------------------ */

#define CHECK(what, call)                 \
    do {                                  \
        asock_error e_ = (call);          \
        if (e_ != ASOCK_OK)               \
            return report((what), e_);    \
    } while (0)

static int add_all(asock_mail_message m, const struct list *l, const char *option,
                   asock_error (*add)(asock_mail_message, const char *, const char *)) {
    for (int i = 0; i < l->n; i++) {
        char what[64 + 256];
        snprintf(what, sizeof what, "%s '%.256s'", option, l->items[i]);
        CHECK(what, add(m, l->items[i], NULL));
    }
    return 0;
}

static int build_message(const struct options *o, asock_mail_message m) {
    int rc;
    CHECK("--from", asock_mail_message_set_from(m, o->from, o->from_name));
    if ((rc = add_all(m, &o->to, "--to", asock_mail_message_add_to)) != 0 ||
        (rc = add_all(m, &o->cc, "--cc", asock_mail_message_add_cc)) != 0 ||
        (rc = add_all(m, &o->bcc, "--bcc", asock_mail_message_add_bcc)) != 0 ||
        (rc = add_all(m, &o->reply_to, "--reply-to", asock_mail_message_add_reply_to)) != 0)
        return rc;
    CHECK("--subject", asock_mail_message_set_subject(m, o->subject ? o->subject : "Test message from " PROG));

    if (o->body_file) {
        char *body;
        size_t len;
        if (!read_file(o->body_file, &body, &len))
            return 1;
        if (strlen(body) != len) {
            fprintf(stderr, PROG ": %s: the body contains a NUL byte (attach binary files with --attach)\n",
                    o->body_file);
            free(body);
            return 1;
        }
        asock_error e = asock_mail_message_set_body(m, body, o->html);
        free(body);
        if (e != ASOCK_OK)
            return report("--body-file", e);
    } else {
        char body[512];
        snprintf(body, sizeof body,
                 o->html ? "<p>This is a test message sent by <b>" PROG "</b> (asock %s).</p>\n"
                         : "This is a test message sent by " PROG " (asock %s).\n",
                 asock_version());
        CHECK("body", asock_mail_message_set_body(m, body, o->html));
    }
    for (int i = 0; i < o->attach.n; i++)
        if ((rc = add_attachment(m, o->attach.items[i])) != 0)
            return rc;
    return 0;
}

/* ---- the client ---------------------------------------------------------------- */

static int configure_client(const struct options *o, const struct settings *s, asock_smtp_client c) {
    if (s->host) {
        CHECK("--server", asock_smtp_client_set_host(c, s->host));
        CHECK("--server", asock_smtp_client_set_port(c, s->port));
        if (s->security >= 0)
            CHECK("--security", asock_smtp_client_set_security(c, s->security));
        if (o->user)
            CHECK("--user", asock_smtp_client_set_credentials(c, o->user, s->password));
        if (o->allow_plaintext_auth)
            CHECK("--allow-plaintext-auth", asock_smtp_client_set_allow_plaintext_auth(c, true));
        if (o->ca_file)
            CHECK("--ca-file", asock_smtp_client_add_trusted_ca_file(c, o->ca_file));
    } else {
        CHECK("--pickup", asock_smtp_client_set_delivery_method(c, ASOCK_SMTP_DELIVERY_PICKUP_DIRECTORY));
        CHECK("--pickup", asock_smtp_client_set_pickup_directory(c, s->pickup_dir));
    }
    if (s->timeout_ms > 0)
        CHECK("--timeout", asock_smtp_client_set_timeout(c, s->timeout_ms));
    return 0;
}

/* ---- SendCompleted and the main thread's wait ----------------------------------- */

struct failed {
    char *address, *response;
    int32_t status_code;
};

/* What the last SendCompleted said, copied: its strings die with the call. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
    uintptr_t token;
    asock_error error, socket_error;
    int32_t status_code;
    bool cancelled;
    char *message;
    struct failed *failed;
    size_t failed_count;
} outcome = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* Set when a SendCompleted is still owed (it never came, even after the
 * cancel): the callback may yet use `outcome`, so main leaves it alone. */
static bool completion_owed;

static char *copy_text(const char *s) {
    return strdup(s ? s : "");
}

/* Runs on the default loop's thread. */
static void on_send_completed(asock_smtp_client client, const asock_send_completed_args *e) {
    (void)client;
    pthread_mutex_lock(&outcome.lock);
    outcome.token = (uintptr_t)e->user_token;
    outcome.error = e->error;
    outcome.socket_error = e->socket_error;
    outcome.status_code = e->status_code;
    outcome.cancelled = e->cancelled;
    outcome.message = copy_text(e->message);
    outcome.failed_count = 0;
    outcome.failed = e->failed_recipient_count ? calloc(e->failed_recipient_count, sizeof *outcome.failed) : NULL;
    if (outcome.failed) {
        for (size_t i = 0; i < e->failed_recipient_count; i++) {
            outcome.failed[i].address = copy_text(e->failed_recipients[i].address);
            outcome.failed[i].response = copy_text(e->failed_recipients[i].response);
            outcome.failed[i].status_code = e->failed_recipients[i].status_code;
        }
        outcome.failed_count = e->failed_recipient_count;
    }
    outcome.done = true;
    pthread_cond_signal(&outcome.cond);
    pthread_mutex_unlock(&outcome.lock);
}

/* Waits up to ms for SendCompleted; true when it ran. */
static bool wait_for_completion(long ms) {
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += ms / 1000;
    deadline.tv_nsec += (ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&outcome.lock);
    int rc = 0;
    while (!outcome.done && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&outcome.cond, &outcome.lock, &deadline);
    bool done = outcome.done;
    pthread_mutex_unlock(&outcome.lock);
    return done;
}

/* A reply's text starts with its code ("250 OK"): printed after the code, the
 * text goes without it. */
static const char *without_code(const char *reply, int32_t code) {
    char digits[16];
    size_t n = (size_t)snprintf(digits, sizeof digits, "%d", (int)code);
    if (code > 0 && strncmp(reply, digits, n) == 0 && (reply[n] == ' ' || reply[n] == '-'))
        return reply + n + 1;
    return reply;
}

/* Prints the copied outcome and forgets it; true when the send succeeded. Only
 * called once SendCompleted has run, so the callback no longer touches it. */
static bool print_outcome(uintptr_t expected_token) {
    bool ok = outcome.error == ASOCK_OK && outcome.failed_count == 0;
    const char *message = outcome.message ? outcome.message : "(out of memory copying the reply)";
    if (outcome.token != expected_token) {
        fprintf(stderr, PROG ": SendCompleted carried token %lu, expected %lu\n", (unsigned long)outcome.token,
                (unsigned long)expected_token);
        ok = false;
    }
    message = without_code(message, outcome.status_code);
    if (ok)
        printf("sent: %d %s\n", (int)outcome.status_code, message);
    else
        printf("failed: %s (status %d): %s\n", asock_error_name(outcome.error), (int)outcome.status_code, message);
    if (outcome.socket_error != ASOCK_OK)
        printf("  socket error: %s (%d)\n", asock_error_name(outcome.socket_error), (int)outcome.socket_error);
    if (outcome.cancelled)
        printf("  (cancelled)\n");
    for (size_t i = 0; i < outcome.failed_count; i++) {
        const struct failed *f = &outcome.failed[i];
        printf("  refused recipient %s: %d %s\n", f->address ? f->address : "?", (int)f->status_code,
               without_code(f->response ? f->response : "", f->status_code));
    }
    fflush(stdout);

    free(outcome.message);
    for (size_t i = 0; i < outcome.failed_count; i++) {
        free(outcome.failed[i].address);
        free(outcome.failed[i].response);
    }
    free(outcome.failed);
    outcome.message = NULL;
    outcome.failed = NULL;
    outcome.failed_count = 0;
    return ok;
}

/* Sends `count` copies one after the other; returns the exit status. */
static int send_all(asock_smtp_client c, asock_mail_message m, const struct settings *s) {
    long deadline_ms = (long)(s->timeout_ms > 0 ? s->timeout_ms : ASOCK_SMTP_DEFAULT_TIMEOUT_MS) + DEADLINE_MARGIN_MS;
    int failures = 0;
    for (int i = 1; i <= s->count; i++) {
        pthread_mutex_lock(&outcome.lock);
        outcome.done = false;
        pthread_mutex_unlock(&outcome.lock);

        uintptr_t token = (uintptr_t)i;
        asock_error e = asock_smtp_client_send_async(c, m, (void *)token);
        if (e != ASOCK_OK)
            return report("send", e);
        if (!wait_for_completion(deadline_ms)) {
            fprintf(stderr, PROG ": no SendCompleted within %ld ms: cancelling the send\n", deadline_ms);
            asock_smtp_client_send_async_cancel(c);
            if (!wait_for_completion(CANCEL_GRACE_MS)) {
                fprintf(stderr, PROG ": SendCompleted did not run after the cancel either\n");
                completion_owed = true;
                return 1;
            }
        }
        if (!print_outcome(token))
            failures++;
    }
    return failures == 0 ? 0 : 1;
}

/* ---- main ----------------------------------------------------------------------- */

static void on_trace(int32_t level, const char *category, const char *text, void *userdata) {
    (void)level;
    (void)userdata;
    fprintf(stderr, "[trace %s] %s\n", category, text); /* one call: lines do not interleave */
}

int main(int argc, char **argv) {
    struct options o;
    struct settings s;
    memset(&o, 0, sizeof o);
    memset(&s, 0, sizeof s);
    asock_mail_message m = {0};
    asock_smtp_client c = {0};
    bool tracing = false, cond_ready = false;
    asock_error e;

    if (argc < 2) {
        fputs(usage_text, stderr);
        return 2;
    }
    int rc = parse_options(argc, argv, &o);
    if (rc == 0 && o.help) {
        fputs(usage_text, stdout);
        goto out;
    }
    if (rc != 0 || (rc = check_options(&o, &s)) != 0)
        goto out;

    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr) != 0 || pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) != 0 ||
        pthread_cond_init(&outcome.cond, &attr) != 0) {
        fprintf(stderr, PROG ": cannot create a condition variable\n");
        rc = 1;
        goto out;
    }
    pthread_condattr_destroy(&attr);
    cond_ready = true;

    if ((e = asock_mail_message_new(&m)) != ASOCK_OK) {
        rc = report("asock_mail_message_new", e);
        goto out;
    }
    if ((rc = build_message(&o, m)) != 0)
        goto out;

    if (o.trace) {
        if ((e = asock_set_trace(on_trace, ASOCK_TRACE_INFO, NULL)) != ASOCK_OK) {
            rc = report("--trace", e);
            goto out;
        }
        tracing = true;
    }
    if ((e = asock_smtp_client_new((asock_loop){0}, &c)) != ASOCK_OK) {
        rc = report("asock_smtp_client_new", e);
        goto out;
    }
    if ((rc = configure_client(&o, &s, c)) != 0 ||
        (e = asock_smtp_client_set_send_completed(c, on_send_completed)) != ASOCK_OK) {
        if (rc == 0)
            rc = report("asock_smtp_client_set_send_completed", e);
        goto out;
    }
    rc = send_all(c, m, &s);

out:
    /* Freeing the client says QUIT on the connection kept for reuse. */
    asock_smtp_client_free(c);
    asock_mail_message_free(m);
    if (tracing)
        asock_set_trace(NULL, ASOCK_TRACE_OFF, NULL);
    if (cond_ready && !completion_owed)
        pthread_cond_destroy(&outcome.cond);
    free(s.host);
    free(s.pickup_dir);
    free_options(&o);
    return rc;
}
