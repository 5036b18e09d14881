#!/usr/bin/env python3
"""Where a server's instructions per operation go, from two callgrind runs.

usage: cg_top.py RUN_N.out RUN_2N.out N [TOP]

Runs callgrind_annotate on both files and prints, per operation ((2N run −
N run) / N, so setup and teardown cancel): the instructions
in all, then the TOP functions by inclusive and by
self cost. Self cost is per function symbol, with code the compiler inlined
counted in the function it was inlined into (callgrind_annotate reports
inlined lines as "file-of-the-inlined-code:caller"); inclusive cost is the
largest of a function's entries. Rust names are
shortened (std paths and hashes dropped).
"""
import re
import subprocess
import sys
from collections import defaultdict

LINE = re.compile(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)$")


def annotate(path, inclusive):
    args = ["callgrind_annotate", "--auto=no", "--threshold=100"]
    if inclusive:
        args.append("--inclusive=yes")
    out = subprocess.run(args + [path], capture_output=True, text=True, check=True).stdout
    by_fn, by_obj = defaultdict(int), defaultdict(int)
    for line in out.splitlines():
        m = LINE.match(line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        value = int(m.group(1).replace(",", ""))
        rest = m.group(2).strip()
        mo = re.search(r"\[([^\]]*)\]$", rest)
        obj = mo.group(1).rsplit("/", 1)[-1] if mo else None
        rest = re.sub(r"\s*\[[^\]]*\]$", "", rest)
        fn = rest.split(":", 1)[1] if ":" in rest else rest
        if inclusive:
            # A function inlined into several places is listed once per
            # source file; its inclusive cost is the largest, not the sum.
            by_fn[fn] = max(by_fn[fn], value)
        else:
            by_fn[fn] += value
        if obj:
            by_obj[obj] += value
    return by_fn, by_obj


def short(name):
    name = re.sub(r"<asock::net::apm::AsyncResult<N> as asock::runtime::event_loop::Deliver>", "AsyncResult as Deliver", name)
    name = re.sub(r"<asock::net::apm::AsyncResult<N> as asock::net::io::Sink>", "AsyncResult as Sink", name)
    name = name.replace("asock::", "")
    return name[:100]


def diff(a, b, n):
    return {k: (b.get(k, 0) - a.get(k, 0)) / n for k in set(a) | set(b)}


def main():
    if len(sys.argv) < 4:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    f1, f2, n = sys.argv[1], sys.argv[2], float(sys.argv[3])
    top = int(sys.argv[4]) if len(sys.argv) > 4 else 15
    s1, o1 = annotate(f1, False)
    s2, o2 = annotate(f2, False)
    i1, _ = annotate(f1, True)
    i2, _ = annotate(f2, True)
    selfs = diff(s1, s2, n)
    incl = diff(i1, i2, n)
    def total(path):
        with open(path) as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1])
        return 0

    print(f"    server user-space instructions per operation: {(total(f2) - total(f1)) / n:.0f}")
    print("    inclusive per operation (asock entry points and loop parts):")
    keep = re.compile(r"^(asock_[a-z_]+|.*EventLoop::iterate|.*Deliver>::deliver|.*Socket::(submit|drain|close|start_\w+)"
                      r"|.*Source>::on_ready|polling::Poller::wait|.*Pool<N>::(give|take)|.*HandleTable<T>::\w+)$")
    rows = sorted(((v, k) for k, v in incl.items() if keep.match(k) and v >= 1), reverse=True)
    seen = set()
    for v, k in rows:
        if k in seen:
            continue
        seen.add(k)
        print(f"      {v:7.0f}  {short(k)}")
        if len(seen) >= top:
            break
    print(f"    top {top} by self cost per operation (inlined code counted in its caller):")
    for k, v in sorted(selfs.items(), key=lambda kv: -kv[1])[:top]:
        print(f"      {v:7.0f}  {short(k)}")


if __name__ == "__main__":
    main()
