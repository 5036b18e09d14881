/*
 * The asock SMTP client of the SMTP throughput benchmark (scripts/bench-smtp).
 *
 *   smtp_asock -p PORT [-c CLIENTS] [-n MESSAGES] [-s BODY_BYTES] [-L LIMIT_SECS]
 *   smtp_asock -r [-s BODY_BYTES]      print the rendered message and exit
 *
 * C clients (asock_smtp_client_new) on ONE loop (asock_loop_new, run by
 * asock_loop_run on the main thread) send M messages in all to
 * 127.0.0.1:PORT, each client its share back to back: the SendCompleted
 * callback starts the client's next asock_smtp_client_send_async, so every
 * client keeps one connection (security NONE, a long idle timeout) and has
 * one message in flight at a time. The message is the same for every send:
 * From, To, Subject and a text/plain body of BODY_BYTES bytes in lines of
 * 75 characters (see make_body), like smtp-source's -l payload.
 *
 * The clock starts in a function posted to the loop, before the first
 * connect (so connect and EHLO are inside it, as in an smtp-source run),
 * and stops in the last SendCompleted. Prints one line:
 *
 *   messages M clients C secs S rate R cpu_us_per_msg U
 *
 * Any send that fails ends the program with status 1 and the reason.
 */
#include "common.h"

#include <asock.h>
#include <signal.h>

struct client {
    asock_smtp_client c;
    long left; /* messages still to start */
    long sent; /* messages completed */
};

static asock_loop loop;
static asock_mail_message msg;
static struct client *clients;
static int nclients;
static int active; /* clients with messages still to send */
static double t0, t1, c0, c1;

static void fail(const char *what, asock_error e) {
    char detail[512];
    asock_error_message(detail, sizeof detail);
    die("%s: %s (%d): %s", what, asock_error_name(e), e, detail);
}

#define CHECK(call)                                                                                          \
    do {                                                                                                     \
        asock_error e_ = (call);                                                                             \
        if (e_ != ASOCK_OK)                                                                                  \
            fail(#call, e_);                                                                                 \
    } while (0)

static void on_limit(int sig) {
    (void)sig;
    static const char m[] = "bench: smtp_asock: time limit reached (a send hangs?)\n";
    ssize_t w = write(2, m, sizeof m - 1);
    (void)w;
    _exit(3);
}

static void send_next(struct client *k) {
    k->left--;
    asock_error e = asock_smtp_client_send_async(k->c, msg, k);
    if (e != ASOCK_OK)
        fail("asock_smtp_client_send_async", e);
}

static void on_send_completed(asock_smtp_client c, const asock_send_completed_args *e) {
    (void)c;
    struct client *k = e->user_token;
    if (e->error != ASOCK_OK) {
        /* On the loop thread: report and leave at once. */
        fprintf(stderr, "bench: smtp_asock: client %d, message %ld: %s (%d), status %d, socket %s: %s\n",
                (int)(k - clients), k->sent + 1, asock_error_name(e->error), e->error, e->status_code,
                asock_error_name(e->socket_error), e->message);
        fflush(stderr);
        _exit(1);
    }
    k->sent++;
    if (k->left > 0) {
        send_next(k); /* allowed from inside SendCompleted */
        return;
    }
    if (--active == 0) {
        t1 = now_s();
        c1 = cpu_us();
        asock_loop_stop(loop);
    }
}

static void start(void *state) {
    (void)state;
    t0 = now_s();
    c0 = cpu_us();
    for (int i = 0; i < nclients; i++)
        if (clients[i].left > 0)
            send_next(&clients[i]);
}

/* BODY_BYTES bytes: lines of "N" + 74 'X' and CRLF, the last one cut
 * short, much as smtp-source -l writes its payload (which has 78
 * characters a line: asock sends text bodies quoted-printable, and 75 is
 * the longest line its encoder keeps whole). */
static char *make_body(size_t n) {
    char *b = malloc(n + 1);
    if (!b)
        die("out of memory");
    size_t i = 0;
    for (int line = 1; i < n; line++) {
        size_t col;
        for (col = 0; col < 75 && i < n; col++)
            b[i++] = col == 0 ? (char)('0' + line % 10) : 'X';
        if (i < n)
            b[i++] = '\r';
        if (i < n)
            b[i++] = '\n';
    }
    b[n] = 0;
    return b;
}

static void usage_smtp(void) {
    fprintf(stderr, "usage: smtp_asock -p PORT [-c CLIENTS] [-n MESSAGES] [-s BODY_BYTES] [-L LIMIT_SECS]\n"
                    "       smtp_asock -r [-s BODY_BYTES]\n");
    exit(2);
}

int main(int argc, char **argv) {
    int port = 0, render = 0;
    long total = 20000, size = 4096;
    double limit = 120;
    nclients = 1;
    int opt;
    while ((opt = getopt(argc, argv, "p:c:n:s:L:r")) != -1) {
        switch (opt) {
        case 'p': port = atoi(optarg); break;
        case 'c': nclients = atoi(optarg); break;
        case 'n': total = atol(optarg); break;
        case 's': size = atol(optarg); break;
        case 'L': limit = atof(optarg); break;
        case 'r': render = 1; break;
        default: usage_smtp();
        }
    }
    if (optind != argc || nclients < 1 || nclients > 4096 || total < 1 || size < 1 || size > (1 << 24) ||
        limit <= 0 || (!render && (port < 1 || port > 65535)))
        usage_smtp();
    signal(SIGPIPE, SIG_IGN);

    char *body = make_body((size_t)size);
    CHECK(asock_mail_message_new(&msg));
    CHECK(asock_mail_message_set_from(msg, "from@example.com", NULL));
    CHECK(asock_mail_message_add_to(msg, "to@example.com", NULL));
    CHECK(asock_mail_message_set_subject(msg, "asock SMTP benchmark"));
    CHECK(asock_mail_message_set_body(msg, body, false));
    free(body);

    if (render) {
        size_t need = 0;
        CHECK(asock_mail_message_render(msg, NULL, 0, &need));
        size_t cap = need + 256; /* another render's Message-ID and Date may be longer */
        uint8_t *buf = malloc(cap);
        size_t len = 0;
        if (!buf)
            die("out of memory");
        CHECK(asock_mail_message_render(msg, buf, cap, &len));
        fwrite(buf, 1, len, stdout);
        free(buf);
        asock_mail_message_free(msg);
        return 0;
    }

    signal(SIGALRM, on_limit);
    alarm((unsigned)(limit + 0.999));

    CHECK(asock_loop_new(&loop));
    clients = calloc((size_t)nclients, sizeof *clients);
    if (!clients)
        die("out of memory");
    for (int i = 0; i < nclients; i++) {
        struct client *k = &clients[i];
        k->left = total / nclients + (i < total % nclients ? 1 : 0);
        if (k->left > 0)
            active++;
        CHECK(asock_smtp_client_new(loop, &k->c));
        CHECK(asock_smtp_client_set_host(k->c, "127.0.0.1"));
        CHECK(asock_smtp_client_set_port(k->c, port));
        CHECK(asock_smtp_client_set_security(k->c, ASOCK_SMTP_SECURITY_NONE));
        CHECK(asock_smtp_client_set_timeout(k->c, 30000));
        CHECK(asock_smtp_client_set_idle_timeout(k->c, 600000));
        CHECK(asock_smtp_client_set_send_completed(k->c, on_send_completed));
    }

    CHECK(asock_loop_post(loop, start, NULL));
    CHECK(asock_loop_run(loop));
    if (active != 0)
        die("the loop stopped with %d clients still sending", active);

    long done = 0;
    for (int i = 0; i < nclients; i++)
        done += clients[i].sent;
    double secs = t1 - t0;
    printf("messages %ld clients %d secs %.4f rate %.1f cpu_us_per_msg %.2f\n", done, nclients, secs,
           secs > 0 ? (double)done / secs : 0.0, done > 0 ? (c1 - c0) / (double)done : 0.0);
    fflush(stdout);

    /* Dispose: each idle connection gets QUIT asynchronously (the turns
     * below send it); freeing the loop then closes whatever is left. */
    for (int i = 0; i < nclients; i++)
        asock_smtp_client_free(clients[i].c);
    for (int i = 0; i < 100; i++) {
        uint32_t n = 0;
        if (asock_loop_run_once(loop, 1, &n) != ASOCK_OK || n == 0)
            break;
    }
    asock_loop_free(loop);
    asock_mail_message_free(msg);
    free(clients);
    return 0;
}
