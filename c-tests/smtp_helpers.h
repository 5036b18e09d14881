/*
 * smtp_helpers.h — what test_smtp_*.c share: a scripted fake SMTP server
 * on a thread, and a recorder for SendCompleted.
 *
 * The fake server (fs_*) listens on 127.0.0.1:0 and serves every
 * connection it accepts from one poll() thread. Each connection gets a
 * greeting, then each CRLF line it sends is answered from the script (the
 * fields of fs_server, set before fs_start) or by the test's hook. It
 * records every byte received (per connection and in total), every command
 * line with the number of the read it arrived in, and each DATA payload up
 * to and including the final ".\r\n". On command of the test it closes its
 * idle connections (EOF) or sends them an unsolicited 421.
 *
 * The recorder (sc_*) is one SendCompleted function for every client: it
 * finds the test's sc_rec by the client's id (sc_bind), copies what the
 * callback was given (its strings are only valid during the call), runs an
 * optional hook, then counts the call and wakes waiters.
 *
 * Every wait is a condition variable with a CLOCK_MONOTONIC deadline.
 * Static, header-only: each test file is its own program.
 */
#ifndef ASOCK_SMTP_HELPERS_H
#define ASOCK_SMTP_HELPERS_H

#include "harness.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>

/* ---- timing ------------------------------------------------------------- */

/* Bound of every wait for something that must happen: never reached when
 * things work. */
static inline int sh_wait_ms(void) { return under_valgrind() ? 60000 : 15000; }

/* The client timeout of tests whose point is not a timeout: long enough
 * that valgrind's slowness never trips it. */
static inline int sh_client_timeout_ms(void) { return under_valgrind() ? 20000 : 5000; }

/* A condition variable on CLOCK_MONOTONIC. */
static inline void sh_cond_init(pthread_cond_t *cv) {
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
}

static inline struct timespec sh_deadline(int ms) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

/* ---- a growable, always NUL-terminated byte buffer ------------------------ */

typedef struct sh_buf {
    char *p;
    size_t len, cap;
} sh_buf;

static inline void sh_buf_add(sh_buf *b, const void *d, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (b->len + n + 1 > cap)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (p == NULL)
            abort();
        b->p = p;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, d, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static inline void sh_buf_adds(sh_buf *b, const char *s) { sh_buf_add(b, s, strlen(s)); }

static inline void sh_buf_addf(sh_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline void sh_buf_addf(sh_buf *b, const char *fmt, ...) {
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0)
        sh_buf_add(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static inline void sh_buf_clear(sh_buf *b) {
    b->len = 0;
    if (b->p)
        b->p[0] = '\0';
}

static inline void sh_buf_free(sh_buf *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* A string view of the buffer ("" when empty). */
static inline const char *sh_str(const sh_buf *b) { return b->p ? b->p : ""; }

/* ---- the fake server ---------------------------------------------------- */

#define FS_MAX_CONNS 16
#define FS_MAX_CMDS 64
#define FS_MAX_CAPS 16
#define FS_MAX_REJECT 8

typedef enum fs_action {
    FS_DEFAULT, /* answer from the script */
    FS_REPLY,   /* send what the hook put in `reply` (raw bytes, CRLFs included) */
    FS_SILENT,  /* answer nothing */
    FS_CLOSE,   /* send `reply` (may be empty), then close the connection */
} fs_action;

typedef struct fs_cmd {
    char *line;         /* without the CRLF */
    int read_no;        /* the read (1, 2, …) its last byte arrived in */
    int replies_before; /* replies the server had sent on the connection before that read */
} fs_cmd;

typedef struct fs_conn {
    int fd; /* -1 once closed */
    int index;
    bool peer_closed;   /* the client closed it (EOF or reset seen) */
    bool server_closed; /* the server closed it */
    bool in_data;
    sh_buf rx;       /* every byte received on it */
    sh_buf line;     /* the line being assembled */
    int line_read;   /* the read the current line's first byte came in */
    sh_buf data;     /* the DATA payload being received (or the last one) */
    sh_buf message;  /* the last complete DATA payload, final ".\r\n" included */
    int n_reads;
    size_t read_data_bytes; /* payload bytes taken from the current read */
    int replies_sent;
    int replies_at_read; /* replies_sent when the current read came in */
    fs_cmd cmds[FS_MAX_CMDS];
    int n_cmds;
    int n_mail, n_rcpt, n_data, n_rset, n_quit, n_auth, n_messages;
    int64_t message_at_ms; /* when the last message's final dot was answered */
    int64_t quit_at_ms;    /* when QUIT came */
    /* The last message's final ".\r\n" came in the same read as body bytes
     * before it. */
    bool end_with_body;
} fs_conn;

typedef struct fs_server fs_server;

/* Called for the greeting (`line` NULL), every command line (without its
 * CRLF) and the end of each DATA payload (`line` "."), under the server's
 * lock, on the server thread. */
typedef fs_action (*fs_hook)(fs_server *s, fs_conn *c, const char *line, sh_buf *reply);

struct fs_server {
    /* --- the script: set between fs_new and fs_start --- */
    const char *greeting; /* raw bytes; NULL: "220 fake.test ESMTP ready\r\n" */
    size_t greeting_len;  /* 0: strlen(greeting) */
    bool silent_greeting;
    int ehlo_code;                   /* 0/250: the capabilities; else that code, refused */
    const char *caps[FS_MAX_CAPS];   /* EHLO keywords, NULL-ended */
    int mail_code;                   /* 0: 250 */
    const char *reject[FS_MAX_REJECT]; /* RCPT addresses answered 550 */
    int data_code;                   /* 0: 354 */
    int message_code;                /* the reply to the final dot; 0: 250 */
    int auth_code;                   /* 0: 235 */
    bool close_mid_data;             /* close as soon as payload bytes arrive */
    fs_hook hook;
    void *user;

    /* --- state, under mu --- */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    bool running;
    int lfd;
    int ctl[2];
    uint16_t port;
    fs_conn conns[FS_MAX_CONNS];
    int n_conns;
    int quits;
    int messages;
    sh_buf all_rx;
    bool stop;
    int want_close_idle, want_idle_421; /* requests not yet carried out */
    int requests_done;
};

static inline void fs_lock(fs_server *s) { pthread_mutex_lock(&s->mu); }
static inline void fs_unlock(fs_server *s) { pthread_mutex_unlock(&s->mu); }

static inline fs_server *fs_new(void) {
    fs_server *s = calloc(1, sizeof *s);
    if (s == NULL)
        abort();
    pthread_mutex_init(&s->mu, NULL);
    sh_cond_init(&s->cv);
    s->lfd = -1;
    s->ctl[0] = s->ctl[1] = -1;
    for (int i = 0; i < FS_MAX_CONNS; i++)
        s->conns[i].fd = -1;
    return s;
}

static inline void fs_send_raw(fs_conn *c, const char *p, size_t n) {
    while (n > 0 && c->fd >= 0) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return; /* the client went away: nothing to tell it */
        p += w;
        n -= (size_t)w;
    }
}

static inline void fs_reply(fs_conn *c, const char *text) {
    fs_send_raw(c, text, strlen(text));
    c->replies_sent++;
}

static inline void fs_close_conn(fs_conn *c, bool by_server) {
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
        if (by_server)
            c->server_closed = true;
        else
            c->peer_closed = true;
    }
}

/* Carries out a hook's decision; false when the connection is closed. */
static inline bool fs_act(fs_conn *c, fs_action a, sh_buf *reply) {
    if ((a == FS_REPLY || a == FS_CLOSE) && reply->len > 0)
        fs_reply(c, sh_str(reply));
    if (a == FS_CLOSE) {
        fs_close_conn(c, true);
        return false;
    }
    return true;
}

static inline bool fs_rejected(fs_server *s, const char *addr) {
    for (int i = 0; i < FS_MAX_REJECT && s->reject[i]; i++)
        if (strcasecmp(s->reject[i], addr) == 0)
            return true;
    return false;
}

static inline bool fs_verb(const char *line, const char *verb) {
    size_t n = strlen(verb);
    return strncasecmp(line, verb, n) == 0 && (line[n] == '\0' || line[n] == ' ' || line[n] == ':');
}

/* The script's answer to one command line. */
static inline bool fs_default_command(fs_server *s, fs_conn *c, const char *line) {
    char buf[600];
    if (fs_verb(line, "EHLO")) {
        if (s->ehlo_code != 0 && s->ehlo_code != 250) {
            snprintf(buf, sizeof buf, "%d 5.5.1 EHLO is not understood here\r\n", s->ehlo_code);
            fs_reply(c, buf);
            return true;
        }
        sh_buf r = {0};
        int n = 0;
        while (n < FS_MAX_CAPS && s->caps[n])
            n++;
        sh_buf_addf(&r, "250%cfake.test greets you\r\n", n ? '-' : ' ');
        for (int i = 0; i < n; i++)
            sh_buf_addf(&r, "250%c%s\r\n", i + 1 < n ? '-' : ' ', s->caps[i]);
        fs_reply(c, sh_str(&r));
        sh_buf_free(&r);
    } else if (fs_verb(line, "HELO")) {
        fs_reply(c, "250 fake.test\r\n");
    } else if (fs_verb(line, "MAIL")) {
        c->n_mail++;
        int code = s->mail_code ? s->mail_code : 250;
        snprintf(buf, sizeof buf, code < 400 ? "%d 2.1.0 sender ok\r\n" : "%d 5.1.8 sender rejected\r\n", code);
        fs_reply(c, buf);
    } else if (fs_verb(line, "RCPT")) {
        c->n_rcpt++;
        char addr[256] = "";
        const char *lt = strchr(line, '<'), *gt = lt ? strchr(lt, '>') : NULL;
        if (lt && gt && (size_t)(gt - lt - 1) < sizeof addr) {
            memcpy(addr, lt + 1, (size_t)(gt - lt - 1));
            addr[gt - lt - 1] = '\0';
        }
        if (fs_rejected(s, addr))
            snprintf(buf, sizeof buf, "550 5.1.1 <%s>: recipient rejected\r\n", addr);
        else
            snprintf(buf, sizeof buf, "250 2.1.5 recipient ok\r\n");
        fs_reply(c, buf);
    } else if (fs_verb(line, "DATA")) {
        c->n_data++;
        int code = s->data_code ? s->data_code : 354;
        if (code == 354) {
            c->in_data = true;
            sh_buf_clear(&c->data);
            fs_reply(c, "354 end data with <CR><LF>.<CR><LF>\r\n");
        } else {
            snprintf(buf, sizeof buf, "%d 5.5.1 no DATA for you\r\n", code);
            fs_reply(c, buf);
        }
    } else if (fs_verb(line, "RSET")) {
        c->n_rset++;
        fs_reply(c, "250 2.0.0 reset\r\n");
    } else if (fs_verb(line, "NOOP")) {
        fs_reply(c, "250 2.0.0 ok\r\n");
    } else if (fs_verb(line, "QUIT")) {
        c->n_quit++;
        c->quit_at_ms = now_ms();
        s->quits++;
        fs_reply(c, "221 2.0.0 bye\r\n");
        fs_close_conn(c, true);
        return false;
    } else if (fs_verb(line, "AUTH")) {
        c->n_auth++;
        int code = s->auth_code ? s->auth_code : 235;
        snprintf(buf, sizeof buf,
                 code == 235 ? "%d 2.7.0 authentication successful\r\n" : "%d 5.7.8 authentication credentials invalid\r\n",
                 code);
        fs_reply(c, buf);
    } else if (fs_verb(line, "STARTTLS")) {
        fs_reply(c, "454 4.7.0 TLS not available\r\n");
    } else {
        fs_reply(c, "500 5.5.2 command unrecognized\r\n");
    }
    return c->fd >= 0;
}

/* One complete line (CRLF included in `raw`); false when the connection
 * closed. */
static inline bool fs_line(fs_server *s, fs_conn *c, const char *raw, size_t n) {
    sh_buf reply = {0};
    bool open = true;
    if (c->in_data) {
        if (n == 3 && memcmp(raw, ".\r\n", 3) == 0) {
            sh_buf_add(&c->data, raw, n);
            c->end_with_body = c->line_read == c->n_reads && c->read_data_bytes > 0;
            c->in_data = false;
            c->message_at_ms = now_ms();
            c->n_messages++;
            s->messages++;
            sh_buf_clear(&c->message);
            sh_buf_add(&c->message, c->data.p, c->data.len);
            fs_action a = s->hook ? s->hook(s, c, ".", &reply) : FS_DEFAULT;
            if (a == FS_DEFAULT) {
                char buf[128];
                int code = s->message_code ? s->message_code : 250;
                snprintf(buf, sizeof buf, code < 400 ? "%d 2.0.0 queued as M%d\r\n" : "%d 5.3.4 message refused\r\n",
                         code, s->messages);
                fs_reply(c, buf);
            } else {
                open = fs_act(c, a, &reply);
            }
        } else {
            sh_buf_add(&c->data, raw, n);
            c->read_data_bytes += n;
        }
        sh_buf_free(&reply);
        return open;
    }
    char *line = malloc(n + 1);
    if (line == NULL)
        abort();
    memcpy(line, raw, n);
    line[n] = '\0';
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    if (c->n_cmds < FS_MAX_CMDS) {
        c->cmds[c->n_cmds].line = line;
        c->cmds[c->n_cmds].read_no = c->n_reads;
        c->cmds[c->n_cmds].replies_before = c->replies_at_read;
        c->n_cmds++;
    }
    fs_action a = s->hook ? s->hook(s, c, line, &reply) : FS_DEFAULT;
    if (a == FS_DEFAULT)
        open = fs_default_command(s, c, line);
    else
        open = fs_act(c, a, &reply);
    if (c->n_cmds == 0 || c->cmds[c->n_cmds - 1].line != line)
        free(line);
    sh_buf_free(&reply);
    return open;
}

static inline void fs_read(fs_server *s, fs_conn *c) {
    char buf[65536];
    ssize_t n = recv(c->fd, buf, sizeof buf, 0);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return;
    if (n <= 0) {
        fs_close_conn(c, false);
        return;
    }
    c->n_reads++;
    c->read_data_bytes = 0;
    c->replies_at_read = c->replies_sent;
    sh_buf_add(&c->rx, buf, (size_t)n);
    sh_buf_add(&s->all_rx, buf, (size_t)n);
    for (ssize_t i = 0; i < n; i++) {
        if (c->line.len == 0)
            c->line_read = c->n_reads;
        sh_buf_add(&c->line, &buf[i], 1);
        if (buf[i] == '\n') {
            bool open = fs_line(s, c, c->line.p, c->line.len);
            sh_buf_clear(&c->line);
            if (!open)
                return;
        }
        if (s->close_mid_data && c->in_data && (c->data.len > 0 || c->line.len > 0)) {
            fs_close_conn(c, true);
            return;
        }
    }
}

static inline void fs_accept(fs_server *s) {
    int fd = accept(s->lfd, NULL, NULL);
    if (fd < 0)
        return;
    if (s->n_conns == FS_MAX_CONNS) {
        close(fd);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* replies go out as written */
    fs_conn *c = &s->conns[s->n_conns];
    c->fd = fd;
    c->index = s->n_conns++;
    sh_buf reply = {0};
    fs_action a = s->hook ? s->hook(s, c, NULL, &reply) : FS_DEFAULT;
    if (a == FS_DEFAULT) {
        if (!s->silent_greeting) {
            const char *g = s->greeting ? s->greeting : "220 fake.test ESMTP ready\r\n";
            size_t n = s->greeting_len ? s->greeting_len : strlen(g);
            fs_send_raw(c, g, n);
            c->replies_sent++;
        }
    } else {
        fs_act(c, a, &reply);
    }
    sh_buf_free(&reply);
}

static inline void fs_do_requests(fs_server *s) {
    for (; s->want_close_idle > 0; s->want_close_idle--) {
        for (int i = 0; i < s->n_conns; i++)
            fs_close_conn(&s->conns[i], true);
        s->requests_done++;
    }
    for (; s->want_idle_421 > 0; s->want_idle_421--) {
        for (int i = 0; i < s->n_conns; i++)
            if (s->conns[i].fd >= 0)
                fs_reply(&s->conns[i], "421 4.4.2 fake.test closing idle connection\r\n");
        s->requests_done++;
    }
}

static void *fs_main(void *arg) {
    fs_server *s = arg;
    for (;;) {
        struct pollfd p[2 + FS_MAX_CONNS];
        fs_conn *who[2 + FS_MAX_CONNS];
        nfds_t n = 0;
        fs_lock(s);
        if (s->stop) {
            fs_unlock(s);
            break;
        }
        p[n] = (struct pollfd){.fd = s->ctl[0], .events = POLLIN};
        who[n++] = NULL;
        p[n] = (struct pollfd){.fd = s->lfd, .events = POLLIN};
        who[n++] = NULL;
        for (int i = 0; i < s->n_conns; i++)
            if (s->conns[i].fd >= 0) {
                p[n] = (struct pollfd){.fd = s->conns[i].fd, .events = POLLIN};
                who[n++] = &s->conns[i];
            }
        fs_unlock(s);
        int r = poll(p, n, -1);
        if (r < 0)
            continue; /* EINTR */
        fs_lock(s);
        if (p[0].revents) {
            char drain[64];
            ssize_t ignored = read(s->ctl[0], drain, sizeof drain);
            (void)ignored;
            fs_do_requests(s);
        }
        if (p[1].revents & POLLIN)
            fs_accept(s);
        for (nfds_t i = 2; i < n; i++)
            if (p[i].revents && who[i]->fd == p[i].fd)
                fs_read(s, who[i]);
        pthread_cond_broadcast(&s->cv);
        fs_unlock(s);
    }
    return NULL;
}

/* Listens and starts the thread; the port is in s->port. */
static inline bool fs_start(fs_server *s) {
    s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s->lfd < 0)
        return false;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    socklen_t al = sizeof a;
    if (bind(s->lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(s->lfd, 16) != 0 ||
        getsockname(s->lfd, (struct sockaddr *)&a, &al) != 0)
        return false;
    s->port = ntohs(a.sin_port);
    if (pipe2(s->ctl, O_CLOEXEC) != 0)
        return false;
    if (pthread_create(&s->thread, NULL, fs_main, s) != 0)
        return false;
    s->running = true;
    return true;
}

static inline void fs_poke(fs_server *s) {
    ssize_t ignored = write(s->ctl[1], "x", 1);
    (void)ignored;
}

/* Stops the thread, closes everything and frees the server. */
static inline void fs_free(fs_server *s) {
    if (s == NULL)
        return;
    if (s->running) {
        fs_lock(s);
        s->stop = true;
        fs_unlock(s);
        fs_poke(s);
        pthread_join(s->thread, NULL);
    }
    for (int i = 0; i < FS_MAX_CONNS; i++) {
        fs_conn *c = &s->conns[i];
        if (c->fd >= 0)
            close(c->fd);
        sh_buf_free(&c->rx);
        sh_buf_free(&c->line);
        sh_buf_free(&c->data);
        sh_buf_free(&c->message);
        for (int k = 0; k < c->n_cmds; k++)
            free(c->cmds[k].line);
    }
    sh_buf_free(&s->all_rx);
    if (s->lfd >= 0)
        close(s->lfd);
    if (s->ctl[0] >= 0)
        close(s->ctl[0]);
    if (s->ctl[1] >= 0)
        close(s->ctl[1]);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* Waits until pred(s, ctx) (called under the lock) holds; false at the
 * deadline. */
typedef bool (*fs_pred)(fs_server *s, void *ctx);

static inline bool fs_wait(fs_server *s, fs_pred pred, void *ctx, int ms) {
    struct timespec dl = sh_deadline(ms);
    fs_lock(s);
    bool ok = pred(s, ctx);
    while (!ok) {
        if (pthread_cond_timedwait(&s->cv, &s->mu, &dl) == ETIMEDOUT) {
            ok = pred(s, ctx);
            break;
        }
        ok = pred(s, ctx);
    }
    fs_unlock(s);
    return ok;
}

static inline bool fs_pred_conns(fs_server *s, void *ctx) { return s->n_conns >= *(int *)ctx; }
static inline bool fs_pred_quits(fs_server *s, void *ctx) { return s->quits >= *(int *)ctx; }
static inline bool fs_pred_messages(fs_server *s, void *ctx) { return s->messages >= *(int *)ctx; }
static inline bool fs_pred_requests(fs_server *s, void *ctx) { return s->requests_done >= *(int *)ctx; }
static inline bool fs_pred_peer_closed(fs_server *s, void *ctx) {
    int i = *(int *)ctx;
    return i < s->n_conns && s->conns[i].peer_closed;
}
static inline bool fs_pred_closed(fs_server *s, void *ctx) {
    int i = *(int *)ctx;
    return i < s->n_conns && s->conns[i].fd < 0;
}
static inline bool fs_pred_all_closed(fs_server *s, void *ctx) {
    (void)ctx;
    for (int i = 0; i < s->n_conns; i++)
        if (s->conns[i].fd >= 0)
            return false;
    return true;
}
static inline bool fs_pred_rx(fs_server *s, void *ctx) { return strstr(sh_str(&s->all_rx), (const char *)ctx) != NULL; }

static inline bool fs_wait_conns(fs_server *s, int n) { return fs_wait(s, fs_pred_conns, &n, sh_wait_ms()); }
static inline bool fs_wait_quits(fs_server *s, int n) { return fs_wait(s, fs_pred_quits, &n, sh_wait_ms()); }
static inline bool fs_wait_messages(fs_server *s, int n) { return fs_wait(s, fs_pred_messages, &n, sh_wait_ms()); }
/* The client closed connection i. */
static inline bool fs_wait_peer_closed(fs_server *s, int i) { return fs_wait(s, fs_pred_peer_closed, &i, sh_wait_ms()); }
/* Connection i is closed, by either side. */
static inline bool fs_wait_closed(fs_server *s, int i) { return fs_wait(s, fs_pred_closed, &i, sh_wait_ms()); }
/* Every connection so far is closed, by either side. */
static inline bool fs_wait_all_closed(fs_server *s) { return fs_wait(s, fs_pred_all_closed, NULL, sh_wait_ms()); }
static inline bool fs_wait_rx(fs_server *s, const char *text) {
    return fs_wait(s, fs_pred_rx, (void *)text, sh_wait_ms());
}

/* Asks the server thread to do something to its open connections and waits
 * until it has. */
static inline bool fs_request(fs_server *s, int *counter) {
    fs_lock(s);
    int want = s->requests_done + 1;
    (*counter)++;
    fs_unlock(s);
    fs_poke(s);
    return fs_wait(s, fs_pred_requests, &want, sh_wait_ms());
}

/* Closes every open connection (the client sees EOF). */
static inline bool fs_close_idle(fs_server *s) { return fs_request(s, &s->want_close_idle); }
/* Sends "421 …" on every open connection and leaves it open. */
static inline bool fs_send_idle_421(fs_server *s) { return fs_request(s, &s->want_idle_421); }

static inline int fs_conn_count(fs_server *s) {
    fs_lock(s);
    int n = s->n_conns;
    fs_unlock(s);
    return n;
}

static inline int fs_quit_count(fs_server *s) {
    fs_lock(s);
    int n = s->quits;
    fs_unlock(s);
    return n;
}

/* Whether anything received, on any connection, contains `text`. */
static inline bool fs_rx_has(fs_server *s, const char *text) {
    fs_lock(s);
    bool has = strstr(sh_str(&s->all_rx), text) != NULL;
    fs_unlock(s);
    return has;
}

/* Connection i's command lines (no CRLF, data excluded) joined with "\n"
 * into a new string (caller frees). */
static inline char *fs_commands(fs_server *s, int i) {
    sh_buf b = {0};
    sh_buf_adds(&b, "");
    fs_lock(s);
    if (i < s->n_conns)
        for (int k = 0; k < s->conns[i].n_cmds; k++) {
            sh_buf_adds(&b, s->conns[i].cmds[k].line);
            sh_buf_adds(&b, "\n");
        }
    fs_unlock(s);
    return b.p;
}

/* A copy of connection i's last complete DATA payload (caller frees). */
static inline char *fs_message(fs_server *s, int i, size_t *len) {
    sh_buf b = {0};
    sh_buf_adds(&b, "");
    fs_lock(s);
    if (i < s->n_conns)
        sh_buf_add(&b, s->conns[i].message.p ? s->conns[i].message.p : "", s->conns[i].message.len);
    fs_unlock(s);
    if (len)
        *len = b.len;
    return b.p;
}

/* ---- the SendCompleted recorder ------------------------------------------ */

#define SC_MAX_CALLS 4
#define SC_MAX_FAILED 8

typedef struct sc_outcome {
    asock_error error;
    int32_t status;
    asock_error socket_error;
    bool cancelled;
    void *token;
    bool message_null;
    char message[1024];
    size_t n_failed;
    bool failed_null;
    struct {
        char address[256];
        int32_t status;
        char response[512];
    } failed[SC_MAX_FAILED];
    pthread_t thread;
    int64_t at_ms;
    uint64_t client_id;
} sc_outcome;

typedef struct sc_rec sc_rec;
/* Runs inside SendCompleted, on the loop thread, after the outcome was
 * copied and before the call is counted. */
typedef void (*sc_inside_fn)(sc_rec *r, asock_smtp_client c, const asock_send_completed_args *e, int call_no);

struct sc_rec {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int calls;
    sc_outcome out[SC_MAX_CALLS];
    sc_inside_fn inside;
    void *user;
};

static inline void sc_rec_init(sc_rec *r) {
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    sh_cond_init(&r->cv);
}

static inline void sc_rec_destroy(sc_rec *r) {
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
}

static struct {
    uint64_t id;
    sc_rec *rec;
} sc_registry[32];
static pthread_mutex_t sc_registry_mu = PTHREAD_MUTEX_INITIALIZER;
static atomic_int sc_stray_calls; /* SendCompleted for a client no test waits for */

static inline void sc_bind(asock_smtp_client c, sc_rec *r) {
    pthread_mutex_lock(&sc_registry_mu);
    for (size_t i = 0; i < sizeof sc_registry / sizeof sc_registry[0]; i++)
        if (sc_registry[i].id == 0) {
            sc_registry[i].id = c.id;
            sc_registry[i].rec = r;
            break;
        }
    pthread_mutex_unlock(&sc_registry_mu);
}

/* After this returns no callback touches the client's sc_rec any more. */
static inline void sc_unbind(asock_smtp_client c) {
    pthread_mutex_lock(&sc_registry_mu);
    for (size_t i = 0; i < sizeof sc_registry / sizeof sc_registry[0]; i++)
        if (sc_registry[i].id == c.id) {
            sc_registry[i].id = 0;
            sc_registry[i].rec = NULL;
        }
    pthread_mutex_unlock(&sc_registry_mu);
}

static void sc_on_completed(asock_smtp_client c, const asock_send_completed_args *e) {
    pthread_mutex_lock(&sc_registry_mu);
    sc_rec *r = NULL;
    for (size_t i = 0; i < sizeof sc_registry / sizeof sc_registry[0]; i++)
        if (sc_registry[i].id == c.id && c.id != 0)
            r = sc_registry[i].rec;
    if (r == NULL) {
        atomic_fetch_add(&sc_stray_calls, 1);
        pthread_mutex_unlock(&sc_registry_mu);
        return;
    }
    pthread_mutex_lock(&r->mu);
    int call_no = r->calls;
    sc_outcome scratch;
    sc_outcome *o = call_no < SC_MAX_CALLS ? &r->out[call_no] : &scratch;
    memset(o, 0, sizeof *o);
    o->error = e->error;
    o->status = e->status_code;
    o->socket_error = e->socket_error;
    o->cancelled = e->cancelled;
    o->token = e->user_token;
    o->message_null = e->message == NULL;
    snprintf(o->message, sizeof o->message, "%s", e->message ? e->message : "");
    o->n_failed = e->failed_recipient_count;
    o->failed_null = e->failed_recipients == NULL;
    for (size_t i = 0; i < e->failed_recipient_count && i < SC_MAX_FAILED && e->failed_recipients; i++) {
        const asock_failed_recipient *f = &e->failed_recipients[i];
        snprintf(o->failed[i].address, sizeof o->failed[i].address, "%s", f->address ? f->address : "(null)");
        o->failed[i].status = f->status_code;
        snprintf(o->failed[i].response, sizeof o->failed[i].response, "%s", f->response ? f->response : "(null)");
    }
    o->thread = pthread_self();
    o->at_ms = now_ms();
    o->client_id = c.id;
    sc_inside_fn inside = r->inside;
    pthread_mutex_unlock(&r->mu);
    if (inside)
        inside(r, c, e, call_no);
    pthread_mutex_lock(&r->mu);
    r->calls++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_mutex_unlock(&sc_registry_mu);
}

/* Waits until SendCompleted ran at least n times; false at the deadline. */
static inline bool sc_wait(sc_rec *r, int n, int ms) {
    struct timespec dl = sh_deadline(ms);
    pthread_mutex_lock(&r->mu);
    while (r->calls < n)
        if (pthread_cond_timedwait(&r->cv, &r->mu, &dl) == ETIMEDOUT)
            break;
    bool ok = r->calls >= n;
    pthread_mutex_unlock(&r->mu);
    return ok;
}

static inline int sc_calls(sc_rec *r) {
    pthread_mutex_lock(&r->mu);
    int n = r->calls;
    pthread_mutex_unlock(&r->mu);
    return n;
}

/* ---- the default loop ------------------------------------------------------ */

struct sh_flush {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    pthread_t thread;
};

static void sh_flush_mark(void *arg) {
    struct sh_flush *f = arg;
    pthread_mutex_lock(&f->mu);
    f->done = true;
    f->thread = pthread_self();
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

/* Posts a marker to the default loop and waits until it ran: everything
 * queued there before has run by then. *thread (may be NULL) gets the
 * loop's thread. */
static inline bool sh_flush_default_loop(pthread_t *thread) {
    struct sh_flush *f = calloc(1, sizeof *f);
    if (f == NULL)
        return false;
    pthread_mutex_init(&f->mu, NULL);
    sh_cond_init(&f->cv);
    if (asock_loop_post((asock_loop){0}, sh_flush_mark, f) != ASOCK_OK) {
        free(f);
        return false;
    }
    struct timespec dl = sh_deadline(sh_wait_ms());
    pthread_mutex_lock(&f->mu);
    while (!f->done)
        if (pthread_cond_timedwait(&f->cv, &f->mu, &dl) == ETIMEDOUT)
            break;
    bool ok = f->done;
    if (ok && thread)
        *thread = f->thread;
    pthread_mutex_unlock(&f->mu);
    if (ok) { /* else the loop may still run it: leave it */
        pthread_cond_destroy(&f->cv);
        pthread_mutex_destroy(&f->mu);
        free(f);
    }
    return ok;
}

/* ---- clients and messages --------------------------------------------------- */

/* A client on loop `l` for the fake server's port (port 0: none set),
 * host 127.0.0.1, the long timeout, the recorder bound. */
static inline bool sc_client_new_on(asock_loop l, fs_server *s, sc_rec *r, asock_smtp_client *out) {
    asock_smtp_client c;
    asock_error e = asock_smtp_client_new(l, &c);
    if (e != ASOCK_OK) {
        harness_fail_code(__FILE__, __LINE__, "asock_smtp_client_new", e, ASOCK_OK);
        return false;
    }
    if ((e = asock_smtp_client_set_host(c, "127.0.0.1")) != ASOCK_OK ||
        (s != NULL && (e = asock_smtp_client_set_port(c, s->port)) != ASOCK_OK) ||
        (e = asock_smtp_client_set_timeout(c, sh_client_timeout_ms())) != ASOCK_OK ||
        (e = asock_smtp_client_set_send_completed(c, sc_on_completed)) != ASOCK_OK) {
        harness_fail_code(__FILE__, __LINE__, "client settings", e, ASOCK_OK);
        asock_smtp_client_free(c);
        return false;
    }
    if (r != NULL)
        sc_bind(c, r);
    *out = c;
    return true;
}

/* sc_client_new_on the default loop. */
static inline bool sc_client_new(fs_server *s, sc_rec *r, asock_smtp_client *out) {
    return sc_client_new_on((asock_loop){0}, s, r, out);
}

/* A message from `from` to `to` (either NULL: not set) with a subject and
 * an ASCII body. */
static inline asock_mail_message sc_message(const char *from, const char *to) {
    asock_mail_message m = {0};
    asock_error e = asock_mail_message_new(&m);
    if (e != ASOCK_OK) {
        harness_fail_code(__FILE__, __LINE__, "asock_mail_message_new", e, ASOCK_OK);
        return m;
    }
    if ((from && (e = asock_mail_message_set_from(m, from, NULL)) != ASOCK_OK) ||
        (to && (e = asock_mail_message_add_to(m, to, NULL)) != ASOCK_OK) ||
        (e = asock_mail_message_set_subject(m, "fake server test")) != ASOCK_OK ||
        (e = asock_mail_message_set_body(m, "Hello from the C tests.\n", false)) != ASOCK_OK)
        harness_fail_code(__FILE__, __LINE__, "message setters", e, ASOCK_OK);
    return m;
}

/* Starts a send of `m` with `token` and waits for its SendCompleted;
 * copies the outcome to *o. False (a failure recorded) when the send was
 * refused or no callback came in time. */
static inline bool sc_run(asock_smtp_client c, sc_rec *r, asock_mail_message m, void *token, sc_outcome *o) {
    int before = sc_calls(r);
    asock_error e = asock_smtp_client_send_async(c, m, token);
    if (e != ASOCK_OK) {
        harness_fail_code(__FILE__, __LINE__, "asock_smtp_client_send_async", e, ASOCK_OK);
        return false;
    }
    if (!sc_wait(r, before + 1, sh_wait_ms())) {
        harness_fail_cond(__FILE__, __LINE__, "SendCompleted ran in time");
        return false;
    }
    if (o != NULL) {
        pthread_mutex_lock(&r->mu);
        *o = r->out[before < SC_MAX_CALLS ? before : SC_MAX_CALLS - 1];
        pthread_mutex_unlock(&r->mu);
    }
    return true;
}

/* The outcome of call `i` (0-based). */
static inline sc_outcome sc_get(sc_rec *r, int i) {
    pthread_mutex_lock(&r->mu);
    sc_outcome o = r->out[i < SC_MAX_CALLS ? i : SC_MAX_CALLS - 1];
    pthread_mutex_unlock(&r->mu);
    return o;
}

/* Frees the client, waits until the server (if any) saw every connection
 * end (a QUIT on an idle one included), flushes the default loop and
 * unbinds the recorder. */
static inline void sc_finish(asock_smtp_client c, fs_server *s) {
    asock_error e = asock_smtp_client_free(c);
    if (e != ASOCK_OK)
        harness_fail_code(__FILE__, __LINE__, "asock_smtp_client_free", e, ASOCK_OK);
    if (s != NULL && !fs_wait_all_closed(s))
        harness_fail_cond(__FILE__, __LINE__, "every connection ended after asock_smtp_client_free");
    if (!sh_flush_default_loop(NULL))
        harness_fail_cond(__FILE__, __LINE__, "the default loop ran a posted function");
    sc_unbind(c);
}

/* Counts the occurrences of `needle` in `hay`. */
static inline int sh_count(const char *hay, const char *needle) {
    int n = 0;
    size_t len = strlen(needle);
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += len)
        n++;
    return n;
}

/* Run last in each file: no SendCompleted ever came for a client no test
 * was waiting for. */
TEST(no_stray_send_completed_calls) {
    CHECK(sh_flush_default_loop(NULL));
    CHECK_EQ_INT(atomic_load(&sc_stray_calls), 0);
}

#endif /* ASOCK_SMTP_HELPERS_H */
