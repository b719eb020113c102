#!/usr/bin/env python3
"""Makes `tokenwatch gen --format canonical` output look like a real gateway fleet's log.

    scripts/realistic.py [--seed N] [--disorder-ms MS] < gen.log > realistic.log

The generator writes one timestamp form (`2026-11-29T00:00:00.123Z`) in event-time order.
Logs merged from many gateway hosts are neither: this rewrites each line's `ts`, keeping its
instant, as one of the forms tokenwatch reads (the generator's; an RFC 3339 offset other than
Z; nanoseconds; epoch seconds with a fraction; the Common Log Format), and delays each line by
a random 0..MS of log position (default 2,000 ms of event time), so lines arrive out of order
by up to that much, as a host that ships late does. And IPv6 clients use temporary addresses
(RFC 8981): a share of their requests (--temporary-v6, default 1/2) comes from a fresh random
interface id in the client's /64, as phones do per connection. Every `ts` stays a string, so
`benches/plain_loop.rs` parses the same lines. `scripts/bench.sh` uses it for the full-size
GeoIP row (BENCHMARKS.md).
"""

import argparse
import calendar
import datetime
import random
import re
import sys

IP6 = re.compile(rb'"client_ip":"([0-9a-f]{1,4}:[0-9a-f]{1,4}:[0-9a-f]{1,4}:[0-9a-f]{1,4}):[0-9a-f:]*"')
TS = re.compile(rb'"ts":"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.(\d{3})Z"')
MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()


def forms(m, rng):
    y, mo, d, h, mi, s, ms = (int(g) for g in m.groups())
    t = datetime.datetime(y, mo, d, h, mi, s, ms * 1000, tzinfo=datetime.timezone.utc)
    pick = rng.random()
    if pick < 0.4:
        return m.group(0)
    if pick < 0.6:
        local = t.astimezone(datetime.timezone(datetime.timedelta(hours=2)))
        text = local.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms:03d}+02:00"
    elif pick < 0.75:
        text = t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms:03d}{rng.randrange(1000000):06d}Z"
    elif pick < 0.9:
        text = f"{int(t.timestamp())}.{ms:03d}"
    else:
        # CLF has whole seconds: the instant moves back to its second, as nginx logs it
        text = f"{d:02d}/{MONTHS[mo - 1]}/{y}:{h:02d}:{mi:02d}:{s:02d} +0000"
    return b'"ts":"' + text.encode() + b'"'


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--disorder-ms", type=int, default=2000)
    ap.add_argument("--temporary-v6", type=float, default=0.5)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    keyed = []
    t = 0
    for i, line in enumerate(sys.stdin.buffer):
        m = TS.search(line)
        if m is not None:
            y, mo, d, h, mi, s, ms = (int(g) for g in m.groups())
            t = calendar.timegm((y, mo, d, h, mi, s)) * 1000 + ms
            line = line[: m.start()] + forms(m, rng) + line[m.end() :]
        v6 = IP6.search(line)
        if v6 is not None and rng.random() < a.temporary_v6:
            iid = ":".join(f"{rng.randrange(65536):x}" for _ in range(4)).encode()
            line = line[: v6.start()] + b'"client_ip":"' + v6.group(1) + b":" + iid + b'"' + line[v6.end() :]
        # a line without a timestamp keeps its place after its predecessor
        delay = rng.randrange(a.disorder_ms + 1) if a.disorder_ms and m is not None else 0
        keyed.append((t + delay, i, line))
    keyed.sort(key=lambda k: (k[0], k[1]))
    out = sys.stdout.buffer
    for _, _, line in keyed:
        out.write(line)

if __name__ == "__main__":
    main()
