#!/usr/bin/env python3
"""The Python smtplib client of the SMTP throughput benchmark (scripts/bench-smtp).

usage: smtp_smtplib.py -p PORT [-n MESSAGES] [-s BODY_BYTES] [-L LIMIT_SECS]

One smtplib.SMTP connection to 127.0.0.1:PORT (EHLO once), then MESSAGES
sendmail() calls of the same message, back to back, then QUIT. The message
is built once, as bytes: From, To, Subject, Date, Message-ID, MIME headers
and a 7bit text/plain body of BODY_BYTES bytes in lines of 75 characters,
as bench/smtp_asock.c sends it. smtplib does not pipeline: MAIL, RCPT, DATA
and the body are four round trips per message.

The clock starts before the connect (so connect and EHLO are inside it, as
in an smtp-source run; the interpreter's start-up is not) and stops after
the last message's reply. Prints one line:

    messages M clients 1 secs S rate R cpu_us_per_msg U

Any refused message ends the program with status 1.
"""
import argparse
import email.utils
import signal
import smtplib
import sys
import time


def make_body(n):
    """n bytes: lines of "N" + 74 'X' and CRLF, the last one cut short."""
    out = bytearray()
    line = 1
    while len(out) < n:
        out += (str(line % 10) + "X" * 74 + "\r\n").encode()
        line += 1
    return bytes(out[:n])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-p", type=int, required=True, help="server port on 127.0.0.1")
    ap.add_argument("-n", type=int, default=20000, help="messages")
    ap.add_argument("-s", type=int, default=4096, help="body bytes")
    ap.add_argument("-L", type=float, default=120, help="hard time limit, seconds")
    a = ap.parse_args()

    def on_limit(signum, frame):
        sys.stderr.write("bench: smtp_smtplib: time limit reached\n")
        sys.stderr.flush()
        sys.exit(3)

    signal.signal(signal.SIGALRM, on_limit)
    signal.alarm(int(a.L + 0.999))

    headers = (
        "From: <from@example.com>\r\n"
        "To: <to@example.com>\r\n"
        "Subject: smtplib SMTP benchmark\r\n"
        f"Date: {email.utils.formatdate(localtime=False)}\r\n"
        f"Message-ID: {email.utils.make_msgid(domain='example.com')}\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: text/plain; charset="us-ascii"\r\n'
        "Content-Transfer-Encoding: 7bit\r\n"
        "\r\n"
    ).encode()
    message = headers + make_body(a.s)

    t0 = time.perf_counter()
    c0 = time.process_time()
    s = smtplib.SMTP("127.0.0.1", a.p, timeout=30)
    s.ehlo()
    for i in range(a.n):
        refused = s.sendmail("from@example.com", ["to@example.com"], message)
        if refused:
            sys.exit(f"bench: smtp_smtplib: message {i + 1} refused: {refused}")
    t1 = time.perf_counter()
    c1 = time.process_time()
    s.quit()
    secs = t1 - t0
    print(f"messages {a.n} clients 1 secs {secs:.4f} rate {a.n / secs:.1f} "
          f"cpu_us_per_msg {(c1 - c0) * 1e6 / a.n:.2f}", flush=True)


if __name__ == "__main__":
    main()
