/*
 * test_smtp_session.c — section 7, the client's session against a scripted
 * fake server (smtp_helpers.h): PIPELINING (MAIL, every RCPT and DATA in
 * one write; what happens when a recipient or the sender is refused), the
 * connection kept for the next send (QUIT at free, after the idle timeout,
 * or after each send; a server that closed it or says 421 means a
 * transparent reconnect), SendAsyncCancel and free during a send (one
 * cancelled SendCompleted with the user token, and the client works
 * afterwards), a send started from inside SendCompleted, and the blocking
 * send (its codes, no SendCompleted, refused on the loop thread).
 */
#include "harness.h"

#include "smtp_helpers.h"

/* A fake server started with `caps` (NULL-ended, may be NULL). */
static fs_server *server_with(const char *const *caps) {
    fs_server *s = fs_new();
    for (int i = 0; caps && caps[i] && i < FS_MAX_CAPS; i++)
        s->caps[i] = caps[i];
    return s;
}

static const char *const PIPELINING[] = {"PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", NULL};

/* Connection i's command k (a copy; "" when there is none). */
static void command_at(fs_server *s, int i, int k, char *out, size_t len) {
    fs_lock(s);
    const char *line = i < s->n_conns && k < s->conns[i].n_cmds ? s->conns[i].cmds[k].line : "";
    snprintf(out, len, "%s", line);
    fs_unlock(s);
}

/* ---- PIPELINING ---------------------------------------------------------------- */

TEST(pipelining_sends_mail_every_rcpt_and_data_in_one_write) {
    fs_server *s = server_with(PIPELINING);
    REQUIRE(fs_start(s));
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    REQUIRE(sc_client_new(s, &r, &c));
    asock_mail_message m = sc_message("a@x.test", "b@y.test");
    CHECK_OK(asock_mail_message_add_to(m, "c@y.test", NULL));
    CHECK_OK(asock_mail_message_add_cc(m, "d@y.test", NULL));
    CHECK_OK(asock_mail_message_add_bcc(m, "e@y.test", NULL));
    sc_outcome o;
    if (sc_run(c, &r, m, NULL, &o)) {
        CHECK_OK(o.error);
        CHECK_EQ_INT(o.status, 250);
    }
    fs_lock(s);
    fs_conn *k = &s->conns[0];
    static const char *const want[] = {"EHLO [127.0.0.1]",   "MAIL FROM:<a@x.test>", "RCPT TO:<b@y.test>",
                                       "RCPT TO:<c@y.test>", "RCPT TO:<d@y.test>",   "RCPT TO:<e@y.test>",
                                       "DATA"};
    CHECK(k->n_cmds >= 7);
    for (int i = 0; i < 7 && i < k->n_cmds; i++) {
        CHECK(strcmp(k->cmds[i].line, want[i]) == 0);
        if (strcmp(k->cmds[i].line, want[i]) != 0)
            fprintf(stderr, "    command %d: \"%s\", want \"%s\"\n", i, k->cmds[i].line, want[i]);
    }
    if (k->n_cmds >= 7) {
        /* MAIL .. DATA arrived in one read, before the server had answered
         * any of them (2 replies so far: the greeting and EHLO's). */
        for (int i = 2; i < 7; i++) {
            CHECK_EQ_INT(k->cmds[i].read_no, k->cmds[1].read_no);
            CHECK_EQ_INT(k->cmds[i].replies_before, 2);
        }
        CHECK_EQ_INT(k->cmds[1].replies_before, 2);
        CHECK(k->cmds[1].read_no > k->cmds[0].read_no);
    }
    CHECK_EQ_INT(s->messages, 1);
    CHECK(k->end_with_body);
    fs_unlock(s);
    sc_finish(c, s);
    CHECK_OK(asock_mail_message_free(m));
    sc_rec_destroy(&r);
    fs_free(s);
}

TEST(pipelining_rejected_recipient_all_or_nothing_closes_after_354_without_data) {
    fs_server *s = server_with(PIPELINING);
    s->reject[0] = "c@y.test";
    REQUIRE(fs_start(s));
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    REQUIRE(sc_client_new(s, &r, &c));
    asock_mail_message m = sc_message("a@x.test", "b@y.test");
    CHECK_OK(asock_mail_message_add_to(m, "c@y.test", NULL));
    CHECK_OK(asock_mail_message_add_to(m, "d@y.test", NULL));
    int token;
    sc_outcome o;
    if (sc_run(c, &r, m, &token, &o)) {
        CHECK_ERR(o.error, ASOCK_E_SMTP_FAILED_RECIPIENTS);
        CHECK_EQ_INT(o.status, 550);
        CHECK(o.token == &token);
        CHECK_EQ_INT(o.n_failed, 1);
        CHECK(strcmp(o.failed[0].address, "c@y.test") == 0);
        CHECK_EQ_INT(o.failed[0].status, 550);
        CHECK(strcmp(o.failed[0].response, "550 5.1.1 <c@y.test>: recipient rejected") == 0);
    }
    /* DATA got 354; the client closed without a byte of message data. */
    CHECK(fs_wait_peer_closed(s, 0));
    fs_lock(s);
    CHECK_EQ_INT(s->conns[0].n_data, 1);
    CHECK(s->conns[0].in_data);
    CHECK_EQ_INT(s->conns[0].data.len, 0);
    CHECK_EQ_INT(s->conns[0].line.len, 0);
    CHECK_EQ_INT(s->messages, 0);
    fs_unlock(s);
    CHECK(!fs_rx_has(s, "Subject:"));

    /* The client is fine afterwards: a send to the good address works. */
    asock_mail_message ok = sc_message("a@x.test", "b@y.test");
    if (sc_run(c, &r, ok, NULL, &o)) {
        CHECK_OK(o.error);
        CHECK_EQ_INT(o.status, 250);
    }
    CHECK_EQ_INT(fs_conn_count(s), 2);
    sc_finish(c, s);
    CHECK_EQ_INT(sc_calls(&r), 2);
    CHECK_OK(asock_mail_message_free(m));
    CHECK_OK(asock_mail_message_free(ok));
    sc_rec_destroy(&r);
    fs_free(s);
}

TEST(pipelining_deliver_to_accepted_sends_the_message_and_lists_the_refused) {
    fs_server *s = server_with(PIPELINING);
    s->reject[0] = "c@y.test";
    REQUIRE(fs_start(s));
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    REQUIRE(sc_client_new(s, &r, &c));
    CHECK_OK(asock_smtp_client_set_recipient_policy(c, ASOCK_SMTP_RECIPIENTS_DELIVER_TO_ACCEPTED));
    asock_mail_message m = sc_message("a@x.test", "b@y.test");
    CHECK_OK(asock_mail_message_add_cc(m, "c@y.test", NULL));
    sc_outcome o;
    if (sc_run(c, &r, m, NULL, &o)) {
        CHECK_ERR(o.error, ASOCK_E_SMTP_FAILED_RECIPIENTS);
        CHECK_EQ_INT(o.status, 250);
        CHECK_EQ_INT(o.n_failed, 1);
        CHECK(strcmp(o.failed[0].address, "c@y.test") == 0);
        CHECK_EQ_INT(o.failed[0].status, 550);
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

TEST(pipelining_sender_rejected_is_smtp_with_the_code_and_no_message_data) {
    fs_server *s = server_with(PIPELINING);
    s->mail_code = 553;
    REQUIRE(fs_start(s));
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    REQUIRE(sc_client_new(s, &r, &c));
    asock_mail_message m = sc_message("a@x.test", "b@y.test");
    sc_outcome o;
    if (sc_run(c, &r, m, NULL, &o)) {
        CHECK_ERR(o.error, ASOCK_E_SMTP);
        CHECK_EQ_INT(o.status, 553);
    }
    CHECK(!fs_rx_has(s, "Subject:"));
    fs_lock(s);
    CHECK_EQ_INT(s->messages, 0);
    fs_unlock(s);
    sc_finish(c, s);
    CHECK_OK(asock_mail_message_free(m));
    sc_rec_destroy(&r);
    fs_free(s);
}

/* ---- the kept connection ---------------------------------------------------------- */

TEST(two_sends_share_one_connection_and_quit_comes_only_at_free) {
    fs_server *s = server_with(PIPELINING);
    REQUIRE(fs_start(s));
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    REQUIRE(sc_client_new(s, &r, &c));
    asock_mail_message m1 = sc_message("a@x.test", "b@y.test");
    asock_mail_message m2 = sc_message("a2@x.test", "c@y.test");
    sc_outcome o;
    if (sc_run(c, &r, m1, NULL, &o))
        CHECK_OK(o.error);
    if (sc_run(c, &r, m2, NULL, &o))
        CHECK_OK(o.error);
    CHECK_EQ_INT(fs_conn_count(s), 1);
    CHECK_EQ_INT(fs_quit_count(s), 0);
    char *cmds = fs_commands(s, 0);
    static const char want[] = "EHLO [127.0.0.1]\n"
                               "MAIL FROM:<a@x.test>\nRCPT TO:<b@y.test>\nDATA\n"
                               "MAIL FROM:<a2@x.test>\nRCPT TO:<c@y.test>\nDATA\n";
    CHECK(strcmp(cmds, want) == 0);
    if (strcmp(cmds, want) != 0)
        fprintf(stderr, "    commands:\n%s", cmds);
    free(cmds);
    CHECK_OK(asock_smtp_client_free(c));
    CHECK(fs_wait_quits(s, 1)); /* QUIT, asynchronously, once freed */
    CHECK(fs_wait_all_closed(s));
    CHECK(sh_flush_default_loop(NULL));
    sc_unbind(c);
    CHECK_EQ_INT(fs_quit_count(s), 1);
    CHECK_EQ_INT(fs_conn_count(s), 1);
    CHECK_EQ_INT(sc_calls(&r), 2); /* no callback for the QUIT */
    CHECK_OK(asock_mail_message_free(m1));
    CHECK_OK(asock_mail_message_free(m2));
    sc_rec_destroy(&r);
    fs_free(s);
}

TEST(idle_timeout_quits_the_idle_connection) {
    fs_server *s = server_with(NULL);
    REQUIRE(fs_start(s));
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    REQUIRE(sc_client_new(s, &r, &c));
    const int idle = 200;
    CHECK_OK(asock_smtp_client_set_idle_timeout(c, idle));
    asock_mail_message m = sc_message("a@x.test", "b@y.test");
    sc_outcome o;
    if (sc_run(c, &r, m, NULL, &o))
        CHECK_OK(o.error);
    CHECK(fs_wait_quits(s, 1)); /* without a free */
    fs_lock(s);
    int64_t idle_for = s->conns[0].quit_at_ms - s->conns[0].message_at_ms;
    fs_unlock(s);
    CHECK(idle_for >= idle - 20); /* not at once: after the idle timeout */
    if (idle_for < idle - 20)
        fprintf(stderr, "    QUIT came %" PRId64 " ms after the message's reply\n", idle_for);
    CHECK(fs_wait_all_closed(s));
    /* The next send opens a new connection. */
    if (sc_run(c, &r, m, NULL, &o))
        CHECK_OK(o.error);
    CHECK_EQ_INT(fs_conn_count(s), 2);
    sc_finish(c, s);
    CHECK_EQ_INT(fs_quit_count(s), 2);
    CHECK_OK(asock_mail_message_free(m));
    sc_rec_destroy(&r);
    fs_free(s);
}

TEST(idle_timeout_zero_quits_after_every_send) {
    fs_server *s = server_with(PIPELINING);
    REQUIRE(fs_start(s));
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    REQUIRE(sc_client_new(s, &r, &c));
    CHECK_OK(asock_smtp_client_set_idle_timeout(c, 0));
    asock_mail_message m = sc_message("a@x.test", "b@y.test");
    sc_outcome o;
    if (sc_run(c, &r, m, NULL, &o))
        CHECK_OK(o.error);
    CHECK(fs_wait_quits(s, 1));
    if (sc_run(c, &r, m, NULL, &o))
        CHECK_OK(o.error);
    CHECK(fs_wait_quits(s, 2));
    CHECK_EQ_INT(fs_conn_count(s), 2);
    fs_lock(s);
    CHECK_EQ_INT(s->conns[0].n_quit, 1);
    CHECK_EQ_INT(s->conns[1].n_quit, 1);
    CHECK_EQ_INT(s->messages, 2);
    fs_unlock(s);
    sc_finish(c, s);
    CHECK_EQ_INT(fs_quit_count(s), 2);
    CHECK_OK(asock_mail_message_free(m));
    sc_rec_destroy(&r);
    fs_free(s);
}

TEST(server_closing_the_idle_connection_means_a_transparent_reconnect) {
    fs_server *s = server_with(PIPELINING);
    REQUIRE(fs_start(s));
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    REQUIRE(sc_client_new(s, &r, &c));
    asock_mail_message m = sc_message("a@x.test", "b@y.test");
    sc_outcome o;
    if (sc_run(c, &r, m, NULL, &o))
        CHECK_OK(o.error);
    CHECK(fs_close_idle(s)); /* EOF on the kept connection */
    int token;
    if (sc_run(c, &r, m, &token, &o)) {
        CHECK_OK(o.error);
        if (o.error != ASOCK_OK)
            fprintf(stderr, "    the second send: %s (socket error %d %s)\n", o.message, (int)o.socket_error,
                    asock_error_name(o.socket_error));
        CHECK_EQ_INT(o.status, 250);
        CHECK(o.token == &token);
    }
    CHECK_EQ_INT(fs_conn_count(s), 2);
    fs_lock(s);
    CHECK_EQ_INT(s->messages, 2);
    fs_unlock(s);
    sc_finish(c, s);
    CHECK_EQ_INT(sc_calls(&r), 2);
    CHECK_OK(asock_mail_message_free(m));
    sc_rec_destroy(&r);
    fs_free(s);
}

/* A function posted to the default loop that holds it until released. */
struct loop_gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool entered, released;
};

static void gate_hold(void *arg) {
    struct loop_gate *g = arg;
    struct timespec dl = sh_deadline(sh_wait_ms());
    pthread_mutex_lock(&g->mu);
    g->entered = true;
    pthread_cond_broadcast(&g->cv);
    while (!g->released)
        if (pthread_cond_timedwait(&g->cv, &g->mu, &dl) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&g->mu);
}

static bool gate_close(struct loop_gate *g) {
    memset(g, 0, sizeof *g);
    pthread_mutex_init(&g->mu, NULL);
    sh_cond_init(&g->cv);
    if (asock_loop_post((asock_loop){0}, gate_hold, g) != ASOCK_OK)
        return false;
    struct timespec dl = sh_deadline(sh_wait_ms());
    pthread_mutex_lock(&g->mu);
    while (!g->entered)
        if (pthread_cond_timedwait(&g->cv, &g->mu, &dl) == ETIMEDOUT)
            break;
    bool entered = g->entered;
    pthread_mutex_unlock(&g->mu);
    return entered;
}

static void gate_open(struct loop_gate *g) {
    pthread_mutex_lock(&g->mu);
    g->released = true;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

/* The same with the order fixed: the EOF is already waiting when the loop
 * learns of the next send (the loop was busy meanwhile). */
TEST(server_closing_the_idle_connection_while_the_loop_is_busy_means_a_transparent_reconnect) {
    fs_server *s = server_with(PIPELINING);
    REQUIRE(fs_start(s));
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    REQUIRE(sc_client_new(s, &r, &c));
    asock_mail_message m = sc_message("a@x.test", "b@y.test");
    sc_outcome o;
    if (sc_run(c, &r, m, NULL, &o))
        CHECK_OK(o.error);
    struct loop_gate g;
    REQUIRE(gate_close(&g));
    bool closed = fs_close_idle(s);
    asock_error started = asock_smtp_client_send_async(c, m, &g);
    gate_open(&g);
    CHECK(closed);
    CHECK_OK(started);
    if (started == ASOCK_OK && sc_wait(&r, 2, sh_wait_ms())) {
        o = sc_get(&r, 1);
        CHECK_OK(o.error);
        CHECK_EQ_INT(o.status, 250);
        CHECK(o.token == &g);
        if (o.error != ASOCK_OK)
            fprintf(stderr, "    the second send: %s (socket error %d %s)\n", o.message, (int)o.socket_error,
                    asock_error_name(o.socket_error));
    }
    CHECK(sh_flush_default_loop(NULL));
    CHECK_EQ_INT(fs_conn_count(s), 2);
    sc_finish(c, s);
    CHECK_EQ_INT(sc_calls(&r), 2);
    pthread_cond_destroy(&g.cv);
    pthread_mutex_destroy(&g.mu);
    CHECK_OK(asock_mail_message_free(m));
    sc_rec_destroy(&r);
    fs_free(s);
}

TEST(idle_421_from_the_server_drops_the_connection_and_the_next_send_reconnects) {
    fs_server *s = server_with(NULL);
    REQUIRE(fs_start(s));
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    REQUIRE(sc_client_new(s, &r, &c));
    asock_mail_message m = sc_message("a@x.test", "b@y.test");
    sc_outcome o;
    if (sc_run(c, &r, m, NULL, &o))
        CHECK_OK(o.error);
    CHECK(fs_send_idle_421(s));
    CHECK(fs_wait_peer_closed(s, 0)); /* the client closes it on its own */
    CHECK(sh_flush_default_loop(NULL));
    CHECK_EQ_INT(sc_calls(&r), 1); /* an idle connection's end calls nothing back */
    if (sc_run(c, &r, m, NULL, &o))
        CHECK_OK(o.error);
    CHECK_EQ_INT(fs_conn_count(s), 2);
    sc_finish(c, s);
    CHECK_OK(asock_mail_message_free(m));
    sc_rec_destroy(&r);
    fs_free(s);
}

/* The first connection answers its second MAIL with 421 and closes. */
static fs_action mail_421_hook(fs_server *s, fs_conn *c, const char *line, sh_buf *reply) {
    (void)s;
    if (line != NULL && c->index == 0 && fs_verb(line, "MAIL") && c->n_mail >= 1) {
        sh_buf_adds(reply, "421 4.3.2 fake.test shutting down\r\n");
        return FS_CLOSE;
    }
    return FS_DEFAULT;
}

TEST(next_mail_answered_421_reconnects_and_succeeds) {
    for (int pipelining = 0; pipelining < 2; pipelining++) {
        fs_server *s = server_with(pipelining ? PIPELINING : NULL);
        s->hook = mail_421_hook;
        REQUIRE(fs_start(s));
        sc_rec r;
        sc_rec_init(&r);
        asock_smtp_client c;
        REQUIRE(sc_client_new(s, &r, &c));
        asock_mail_message m = sc_message("a@x.test", "b@y.test");
        sc_outcome o;
        if (sc_run(c, &r, m, NULL, &o))
            CHECK_OK(o.error);
        int token;
        if (sc_run(c, &r, m, &token, &o)) {
            CHECK_OK(o.error);
            CHECK_EQ_INT(o.status, 250);
            CHECK(o.token == &token);
            if (o.error != ASOCK_OK)
                fprintf(stderr, "    pipelining %d: %s\n", pipelining, o.message);
        }
        CHECK_EQ_INT(fs_conn_count(s), 2);
        char mail[128];
        command_at(s, 1, 1, mail, sizeof mail);
        CHECK(strcmp(mail, "MAIL FROM:<a@x.test>") == 0);
        fs_lock(s);
        CHECK_EQ_INT(s->messages, 2);
        CHECK_EQ_INT(s->conns[1].n_messages, 1);
        fs_unlock(s);
        sc_finish(c, s);
        CHECK_EQ_INT(sc_calls(&r), 2);
        CHECK_OK(asock_mail_message_free(m));
        sc_rec_destroy(&r);
        fs_free(s);
    }
}

/* The first connection closes, without a word, when its second MAIL comes:
 * the client cannot tell that from a close just before it wrote. */
static fs_action close_at_second_mail_hook(fs_server *s, fs_conn *c, const char *line, sh_buf *reply) {
    (void)s;
    (void)reply;
    if (line != NULL && c->index == 0 && fs_verb(line, "MAIL") && c->n_mail >= 1)
        return FS_CLOSE;
    return FS_DEFAULT;
}

TEST(server_closing_as_the_next_mail_arrives_means_a_transparent_reconnect) {
    for (int pipelining = 0; pipelining < 2; pipelining++) {
        fs_server *s = server_with(pipelining ? PIPELINING : NULL);
        s->hook = close_at_second_mail_hook;
        REQUIRE(fs_start(s));
        sc_rec r;
        sc_rec_init(&r);
        asock_smtp_client c;
        REQUIRE(sc_client_new(s, &r, &c));
        asock_mail_message m = sc_message("a@x.test", "b@y.test");
        sc_outcome o;
        if (sc_run(c, &r, m, NULL, &o))
            CHECK_OK(o.error);
        if (sc_run(c, &r, m, NULL, &o)) {
            CHECK_OK(o.error);
            CHECK_EQ_INT(o.status, 250);
            if (o.error != ASOCK_OK)
                fprintf(stderr, "    pipelining %d: %s\n", pipelining, o.message);
        }
        CHECK_EQ_INT(fs_conn_count(s), 2);
        fs_lock(s);
        CHECK_EQ_INT(s->messages, 2);
        fs_unlock(s);
        sc_finish(c, s);
        CHECK_EQ_INT(sc_calls(&r), 2);
        CHECK_OK(asock_mail_message_free(m));
        sc_rec_destroy(&r);
        fs_free(s);
    }
}

/* ---- cancel and free during a send ----------------------------------------------------- */

TEST(cancel_with_nothing_in_flight_is_ok_and_calls_nothing_back) {
    fs_server *s = server_with(NULL);
    REQUIRE(fs_start(s));
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    REQUIRE(sc_client_new(s, &r, &c));
    CHECK_OK(asock_smtp_client_send_async_cancel(c));
    CHECK(sh_flush_default_loop(NULL));
    CHECK_EQ_INT(sc_calls(&r), 0);
    /* Nor after a send that already completed (its connection stays). */
    asock_mail_message m = sc_message("a@x.test", "b@y.test");
    sc_outcome o;
    if (sc_run(c, &r, m, NULL, &o))
        CHECK_OK(o.error);
    CHECK_OK(asock_smtp_client_send_async_cancel(c));
    CHECK(sh_flush_default_loop(NULL));
    CHECK_EQ_INT(sc_calls(&r), 1);
    if (sc_run(c, &r, m, NULL, &o))
        CHECK_OK(o.error);
    CHECK_EQ_INT(fs_conn_count(s), 1);
    sc_finish(c, s);
    CHECK_EQ_INT(sc_calls(&r), 2);
    CHECK_OK(asock_mail_message_free(m));
    sc_rec_destroy(&r);
    fs_free(s);
}

/* Silent greeting on the first connection only. */
static fs_action silent_first_greeting(fs_server *s, fs_conn *c, const char *line, sh_buf *reply) {
    (void)s;
    (void)reply;
    return line == NULL && c->index == 0 ? FS_SILENT : FS_DEFAULT;
}

static void check_cancelled(const sc_outcome *o, void *token) {
    CHECK(o->cancelled);
    CHECK_ERR(o->error, ASOCK_OPERATION_ABORTED);
    CHECK(o->token == token);
    CHECK_EQ_INT(o->status, ASOCK_SMTP_STATUS_GENERAL_FAILURE);
    CHECK(!o->message_null);
    CHECK_EQ_INT(o->n_failed, 0);
}

TEST(cancel_against_a_silent_server_completes_once_cancelled_then_the_client_sends_again) {
    fs_server *s = server_with(NULL);
    s->hook = silent_first_greeting;
    REQUIRE(fs_start(s));
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    REQUIRE(sc_client_new(s, &r, &c));
    asock_mail_message m = sc_message("a@x.test", "b@y.test");
    int token;
    REQUIRE_OK(asock_smtp_client_send_async(c, m, &token));
    CHECK(fs_wait_conns(s, 1));
    CHECK_OK(asock_smtp_client_send_async_cancel(c));
    REQUIRE(sc_wait(&r, 1, sh_wait_ms()));
    pthread_t loop_thread;
    CHECK(sh_flush_default_loop(&loop_thread));
    sc_outcome o = sc_get(&r, 0);
    check_cancelled(&o, &token);
    CHECK(pthread_equal(o.thread, loop_thread));
    CHECK_EQ_INT(sc_calls(&r), 1); /* exactly once */
    CHECK_OK(asock_smtp_client_send_async_cancel(c)); /* nothing left to cancel */
    CHECK(fs_wait_peer_closed(s, 0));
    CHECK(sh_flush_default_loop(NULL));
    CHECK_EQ_INT(sc_calls(&r), 1);

    int token2;
    if (sc_run(c, &r, m, &token2, &o)) {
        CHECK_OK(o.error);
        CHECK(!o.cancelled);
        CHECK(o.token == &token2);
    }
    CHECK_EQ_INT(fs_conn_count(s), 2);
    sc_finish(c, s);
    CHECK_EQ_INT(sc_calls(&r), 2);
    CHECK_OK(asock_mail_message_free(m));
    sc_rec_destroy(&r);
    fs_free(s);
}

/* The first connection never answers RCPT. */
static fs_action silent_first_rcpt(fs_server *s, fs_conn *c, const char *line, sh_buf *reply) {
    (void)s;
    (void)reply;
    return line != NULL && c->index == 0 && fs_verb(line, "RCPT") ? FS_SILENT : FS_DEFAULT;
}

TEST(cancel_mid_transaction_drops_the_connection_and_the_client_sends_again) {
    fs_server *s = server_with(NULL);
    s->hook = silent_first_rcpt;
    REQUIRE(fs_start(s));
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    REQUIRE(sc_client_new(s, &r, &c));
    asock_mail_message m = sc_message("a@x.test", "b@y.test");
    int token;
    REQUIRE_OK(asock_smtp_client_send_async(c, m, &token));
    CHECK(fs_wait_rx(s, "RCPT TO:<b@y.test>\r\n"));
    CHECK_EQ_INT(sc_calls(&r), 0);
    CHECK_OK(asock_smtp_client_send_async_cancel(c));
    REQUIRE(sc_wait(&r, 1, sh_wait_ms()));
    sc_outcome o = sc_get(&r, 0);
    check_cancelled(&o, &token);
    /* A half-done transaction cannot be reused: the connection goes. */
    CHECK(fs_wait_peer_closed(s, 0));
    CHECK(!fs_rx_has(s, "DATA"));
    CHECK(sh_flush_default_loop(NULL));
    CHECK_EQ_INT(sc_calls(&r), 1);

    if (sc_run(c, &r, m, NULL, &o))
        CHECK_OK(o.error);
    CHECK_EQ_INT(fs_conn_count(s), 2);
    fs_lock(s);
    CHECK_EQ_INT(s->messages, 1);
    CHECK_EQ_INT(s->conns[1].n_messages, 1);
    fs_unlock(s);
    sc_finish(c, s);
    CHECK_EQ_INT(sc_calls(&r), 2);
    CHECK_OK(asock_mail_message_free(m));
    sc_rec_destroy(&r);
    fs_free(s);
}

TEST(free_during_a_send_completes_it_cancelled_with_the_token) {
    fs_server *s = server_with(NULL);
    s->silent_greeting = true;
    REQUIRE(fs_start(s));
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    REQUIRE(sc_client_new(s, &r, &c));
    asock_mail_message m = sc_message("a@x.test", "b@y.test");
    int token;
    REQUIRE_OK(asock_smtp_client_send_async(c, m, &token));
    CHECK(fs_wait_conns(s, 1));
    CHECK_OK(asock_smtp_client_free(c));
    CHECK_ERR(asock_smtp_client_send_async_cancel(c), ASOCK_E_OBJECT_DISPOSED);
    REQUIRE(sc_wait(&r, 1, sh_wait_ms()));
    sc_outcome o = sc_get(&r, 0);
    check_cancelled(&o, &token);
    CHECK(fs_wait_peer_closed(s, 0));
    CHECK(sh_flush_default_loop(NULL));
    CHECK_EQ_INT(sc_calls(&r), 1);
    CHECK_EQ_INT(fs_quit_count(s), 0); /* no greeting yet: nothing to QUIT */
    sc_unbind(c);
    CHECK_OK(asock_mail_message_free(m));
    sc_rec_destroy(&r);
    fs_free(s);
}

TEST(free_mid_transaction_completes_it_cancelled) {
    fs_server *s = server_with(NULL);
    s->hook = silent_first_rcpt;
    REQUIRE(fs_start(s));
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    REQUIRE(sc_client_new(s, &r, &c));
    asock_mail_message m = sc_message("a@x.test", "b@y.test");
    REQUIRE_OK(asock_smtp_client_send_async(c, m, &r));
    CHECK(fs_wait_rx(s, "RCPT TO:<b@y.test>\r\n"));
    CHECK_OK(asock_smtp_client_free(c));
    REQUIRE(sc_wait(&r, 1, sh_wait_ms()));
    sc_outcome o = sc_get(&r, 0);
    check_cancelled(&o, &r);
    CHECK(fs_wait_peer_closed(s, 0));
    CHECK(!fs_rx_has(s, "DATA"));
    CHECK(sh_flush_default_loop(NULL));
    CHECK_EQ_INT(sc_calls(&r), 1);
    sc_unbind(c);
    CHECK_OK(asock_mail_message_free(m));
    sc_rec_destroy(&r);
    fs_free(s);
}

/* ---- from inside SendCompleted, and the blocking send ------------------------------------ */

struct inside_state {
    asock_mail_message next;
    void *next_token;
    asock_error started; /* send_async's result inside the first callback */
    asock_error blocking; /* asock_smtp_client_send's result inside it */
    bool ran;
};

static void start_next_inside(sc_rec *r, asock_smtp_client c, const asock_send_completed_args *e, int call_no) {
    (void)e;
    struct inside_state *st = r->user;
    if (call_no == 0) {
        st->started = asock_smtp_client_send_async(c, st->next, st->next_token);
        st->ran = true;
    }
}

TEST(a_new_send_may_start_inside_send_completed) {
    fs_server *s = server_with(PIPELINING);
    REQUIRE(fs_start(s));
    sc_rec r;
    sc_rec_init(&r);
    struct inside_state st;
    memset(&st, 0, sizeof st);
    int token1, token2;
    st.next = sc_message("a@x.test", "c@y.test");
    st.next_token = &token2;
    st.started = -7;
    r.user = &st;
    r.inside = start_next_inside;
    asock_smtp_client c;
    REQUIRE(sc_client_new(s, &r, &c));
    asock_mail_message m = sc_message("a@x.test", "b@y.test");
    REQUIRE_OK(asock_smtp_client_send_async(c, m, &token1));
    CHECK(sc_wait(&r, 2, sh_wait_ms()));
    CHECK(st.ran);
    CHECK_OK(st.started);
    sc_outcome o1 = sc_get(&r, 0), o2 = sc_get(&r, 1);
    CHECK_OK(o1.error);
    CHECK(o1.token == &token1);
    CHECK_OK(o2.error);
    CHECK(o2.token == &token2);
    CHECK(!o2.cancelled);
    CHECK_EQ_INT(fs_conn_count(s), 1); /* the second send reused the connection */
    fs_lock(s);
    CHECK_EQ_INT(s->messages, 2);
    fs_unlock(s);
    CHECK(fs_rx_has(s, "RCPT TO:<c@y.test>\r\n"));
    sc_finish(c, s);
    CHECK_EQ_INT(sc_calls(&r), 2);
    CHECK_OK(asock_mail_message_free(m));
    CHECK_OK(asock_mail_message_free(st.next));
    sc_rec_destroy(&r);
    fs_free(s);
}

TEST(blocking_send_returns_the_outcome_and_calls_nothing_back) {
    fs_server *s = server_with(NULL);
    s->reject[0] = "bad@y.test";
    REQUIRE(fs_start(s));
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    REQUIRE(sc_client_new(s, &r, &c));
    asock_mail_message ok = sc_message("a@x.test", "b@y.test");
    asock_mail_message bad = sc_message("a@x.test", "bad@y.test");
    CHECK_OK(asock_smtp_client_send(c, ok));
    CHECK_ERR(asock_smtp_client_send(c, bad), ASOCK_E_SMTP_FAILED_RECIPIENTS);
    char msg[1024];
    last_message(msg, sizeof msg);
    CHECK(strstr(msg, "550") != NULL);
    CHECK(strstr(msg, "bad@y.test") != NULL);
    CHECK_OK(asock_smtp_client_send(c, ok));
    CHECK(sh_flush_default_loop(NULL));
    CHECK_EQ_INT(sc_calls(&r), 0);
    CHECK_EQ_INT(fs_conn_count(s), 1);
    fs_lock(s);
    CHECK_EQ_INT(s->messages, 2);
    fs_unlock(s);
    /* send_async and send mix on one client. */
    sc_outcome o;
    if (sc_run(c, &r, ok, NULL, &o))
        CHECK_OK(o.error);
    sc_finish(c, s);
    CHECK_EQ_INT(sc_calls(&r), 1);
    CHECK_OK(asock_mail_message_free(ok));
    CHECK_OK(asock_mail_message_free(bad));
    sc_rec_destroy(&r);
    fs_free(s);
}

static void blocking_inside(sc_rec *r, asock_smtp_client c, const asock_send_completed_args *e, int call_no) {
    (void)e;
    struct inside_state *st = r->user;
    if (call_no == 0) {
        st->blocking = asock_smtp_client_send(c, st->next);
        st->ran = true;
    }
}

struct posted_send {
    asock_smtp_client c;
    asock_mail_message m;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    asock_error result;
};

static void blocking_in_post(void *arg) {
    struct posted_send *p = arg;
    asock_error e = asock_smtp_client_send(p->c, p->m);
    pthread_mutex_lock(&p->mu);
    p->result = e;
    p->done = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

TEST(blocking_send_on_the_loop_thread_is_invalid_operation) {
    fs_server *s = server_with(NULL);
    REQUIRE(fs_start(s));
    sc_rec r;
    sc_rec_init(&r);
    struct inside_state st;
    memset(&st, 0, sizeof st);
    st.next = sc_message("a@x.test", "c@y.test");
    st.blocking = -7;
    r.user = &st;
    r.inside = blocking_inside;
    asock_smtp_client c;
    REQUIRE(sc_client_new(s, &r, &c));
    asock_mail_message m = sc_message("a@x.test", "b@y.test");
    sc_outcome o;
    if (sc_run(c, &r, m, NULL, &o))
        CHECK_OK(o.error);
    CHECK(st.ran);
    CHECK_ERR(st.blocking, ASOCK_E_INVALID_OPERATION); /* from inside SendCompleted */

    /* From a function posted to the default loop. */
    struct posted_send p;
    memset(&p, 0, sizeof p);
    p.c = c;
    p.m = st.next;
    p.result = -7;
    pthread_mutex_init(&p.mu, NULL);
    sh_cond_init(&p.cv);
    REQUIRE_OK(asock_loop_post((asock_loop){0}, blocking_in_post, &p));
    struct timespec dl = sh_deadline(sh_wait_ms());
    pthread_mutex_lock(&p.mu);
    while (!p.done)
        if (pthread_cond_timedwait(&p.cv, &p.mu, &dl) == ETIMEDOUT)
            break;
    bool done = p.done;
    pthread_mutex_unlock(&p.mu);
    REQUIRE(done);
    CHECK_ERR(p.result, ASOCK_E_INVALID_OPERATION);
    pthread_cond_destroy(&p.cv);
    pthread_mutex_destroy(&p.mu);

    /* Neither started a send. */
    CHECK(sh_flush_default_loop(NULL));
    CHECK(!fs_rx_has(s, "RCPT TO:<c@y.test>"));
    CHECK_EQ_INT(sc_calls(&r), 1);
    /* The client still works from another thread. */
    CHECK_OK(asock_smtp_client_send(c, st.next));
    CHECK(fs_rx_has(s, "RCPT TO:<c@y.test>\r\n"));
    sc_finish(c, s);
    CHECK_EQ_INT(sc_calls(&r), 1);
    CHECK_OK(asock_mail_message_free(m));
    CHECK_OK(asock_mail_message_free(st.next));
    sc_rec_destroy(&r);
    fs_free(s);
}

TEST(the_message_may_be_changed_or_freed_right_after_send_async) {
    fs_server *s = server_with(NULL);
    s->silent_greeting = false;
    REQUIRE(fs_start(s));
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    REQUIRE(sc_client_new(s, &r, &c));
    asock_mail_message m = sc_message("a@x.test", "b@y.test");
    REQUIRE_OK(asock_smtp_client_send_async(c, m, NULL));
    CHECK_OK(asock_mail_message_set_subject(m, "changed after the send"));
    CHECK_OK(asock_mail_message_add_to(m, "late@y.test", NULL));
    CHECK_OK(asock_mail_message_free(m));
    REQUIRE(sc_wait(&r, 1, sh_wait_ms()));
    sc_outcome o = sc_get(&r, 0);
    CHECK_OK(o.error);
    CHECK(fs_rx_has(s, "Subject: fake server test\r\n"));
    CHECK(!fs_rx_has(s, "changed after the send"));
    CHECK(!fs_rx_has(s, "late@y.test"));
    sc_finish(c, s);
    sc_rec_destroy(&r);
    fs_free(s);
}

/* Last: no SendCompleted ever came for a client no test was waiting for. */
/* ---- the loop freed under a send ----------------------------------------------- */

static void check_loop_freed(const sc_outcome *o, void *token) {
    CHECK_EQ_INT(o->error, ASOCK_OPERATION_ABORTED);
    CHECK(!o->cancelled);
    CHECK_EQ_INT(o->status, ASOCK_SMTP_STATUS_GENERAL_FAILURE);
    CHECK(o->token == token);
    CHECK(strstr(o->message, "loop") != NULL);
}

TEST(freeing_the_loop_mid_send_completes_the_send_once_aborted) {
    fs_server *s = server_with(NULL);
    s->hook = silent_first_greeting;
    REQUIRE(fs_start(s));
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    REQUIRE_OK(asock_loop_start_thread(l));
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    REQUIRE(sc_client_new_on(l, s, &r, &c));
    asock_mail_message m = sc_message("a@x.test", "b@y.test");
    int token;
    REQUIRE_OK(asock_smtp_client_send_async(c, m, &token));
    CHECK(fs_wait_conns(s, 1)); /* connected, waiting for a greeting */
    CHECK_OK(asock_loop_free(l));
    REQUIRE(sc_wait(&r, 1, sh_wait_ms()));
    sc_outcome o = sc_get(&r, 0);
    check_loop_freed(&o, &token);
    CHECK(fs_wait_peer_closed(s, 0));
    CHECK_ERR(asock_smtp_client_send_async(c, m, &token), ASOCK_E_OBJECT_DISPOSED);
    CHECK_OK(asock_smtp_client_free(c));
    CHECK_EQ_INT(sc_calls(&r), 1);
    sc_unbind(c);
    CHECK_OK(asock_mail_message_free(m));
    sc_rec_destroy(&r);
    fs_free(s);
}

TEST(freeing_a_loop_that_never_ran_completes_the_stored_send) {
    fs_server *s = server_with(NULL);
    REQUIRE(fs_start(s));
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l)); /* never run: the send stays stored */
    sc_rec r;
    sc_rec_init(&r);
    asock_smtp_client c;
    REQUIRE(sc_client_new_on(l, s, &r, &c));
    asock_mail_message m = sc_message("a@x.test", "b@y.test");
    int token;
    REQUIRE_OK(asock_smtp_client_send_async(c, m, &token));
    CHECK_EQ_INT(sc_calls(&r), 0);
    CHECK_OK(asock_loop_free(l)); /* its final drain runs the stored start */
    CHECK_EQ_INT(sc_calls(&r), 1);
    sc_outcome o = sc_get(&r, 0);
    check_loop_freed(&o, &token);
    CHECK(pthread_equal(o.thread, pthread_self())); /* free's thread acted as the loop's */
    CHECK_EQ_INT(fs_conn_count(s), 0);
    CHECK_OK(asock_smtp_client_free(c));
    sc_unbind(c);
    CHECK_OK(asock_mail_message_free(m));
    sc_rec_destroy(&r);
    fs_free(s);
}

int main(void) {
    RUN(pipelining_sends_mail_every_rcpt_and_data_in_one_write);
    RUN(pipelining_rejected_recipient_all_or_nothing_closes_after_354_without_data);
    RUN(pipelining_deliver_to_accepted_sends_the_message_and_lists_the_refused);
    RUN(pipelining_sender_rejected_is_smtp_with_the_code_and_no_message_data);
    RUN(two_sends_share_one_connection_and_quit_comes_only_at_free);
    RUN(idle_timeout_quits_the_idle_connection);
    RUN(idle_timeout_zero_quits_after_every_send);
    RUN(server_closing_the_idle_connection_means_a_transparent_reconnect);
    RUN(server_closing_the_idle_connection_while_the_loop_is_busy_means_a_transparent_reconnect);
    RUN(idle_421_from_the_server_drops_the_connection_and_the_next_send_reconnects);
    RUN(next_mail_answered_421_reconnects_and_succeeds);
    RUN(server_closing_as_the_next_mail_arrives_means_a_transparent_reconnect);
    RUN(cancel_with_nothing_in_flight_is_ok_and_calls_nothing_back);
    RUN(cancel_against_a_silent_server_completes_once_cancelled_then_the_client_sends_again);
    RUN(cancel_mid_transaction_drops_the_connection_and_the_client_sends_again);
    RUN(free_during_a_send_completes_it_cancelled_with_the_token);
    RUN(free_mid_transaction_completes_it_cancelled);
    RUN(a_new_send_may_start_inside_send_completed);
    RUN(blocking_send_returns_the_outcome_and_calls_nothing_back);
    RUN(blocking_send_on_the_loop_thread_is_invalid_operation);
    RUN(the_message_may_be_changed_or_freed_right_after_send_async);
    RUN(freeing_the_loop_mid_send_completes_the_send_once_aborted);
    RUN(freeing_a_loop_that_never_ran_completes_the_stored_send);
    RUN(no_stray_send_completed_calls);
    return harness_finish();
}
