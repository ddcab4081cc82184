#!/usr/bin/env python3
"""A change-feed connector: sends a destination only what changed.

The loop every connector runs on a segments feed (README, "Change feeds"):

    rows = read_feed(feed)          -- the changes after the last acknowledged one
    send(rows)                      -- to the CRM, the ad platform, a file...
    ack_feed(feed, last position)   -- only once the destination has them

A connector that dies between send and ack reads the same rows again when
it restarts (at least once); once acknowledged, a change never comes back.
Destinations should therefore apply changes idempotently, by key: here the
"destination" is a JSON file of each segment's members, which makes
entered/exited idempotent.

    python3 examples/feed_connector.py "host=... dbname=..." my_feed members.json
    python3 examples/feed_connector.py --once ...   # drain, then exit

Needs psycopg 3 (Debian: python3-psycopg).
"""

import argparse
import json
import os
import time

import psycopg


def load(path):
    """The destination's state: {segment_id: [keys]}, and the last position applied."""
    if not os.path.exists(path):
        return {}, 0
    with open(path) as f:
        state = json.load(f)
    return {int(s): set(keys) for s, keys in state["members"].items()}, state["position"]


def save(path, members, position):
    """Writes the destination atomically: the file is the old one or the new one."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"members": {s: sorted(k) for s, k in members.items()}, "position": position}, f)
    os.replace(tmp, path)


def run(dsn, feed, path, once=False, batch=10000, pause=1.0):
    members, applied = load(path)
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            rows = conn.execute(
                "SELECT position, segment_id, key, change FROM segments.read_feed(%s, %s)",
                (feed, batch),
            ).fetchall()
            if not rows:
                if once:
                    return members
                time.sleep(pause)
                continue
            for position, segment, key, change in rows:
                if position <= applied:
                    continue  # sent before a crash, not acknowledged: already applied
                keys = members.setdefault(segment, set())
                if change == "entered":
                    keys.add(key)
                else:
                    keys.discard(key)
                applied = position
            # "Send": the destination has the changes once this returns...
            save(path, members, applied)
            # ...and only then are they acknowledged.
            conn.execute("SELECT segments.ack_feed(%s, %s)", (feed, rows[-1][0]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dsn", help="libpq connection string")
    parser.add_argument("feed", help="the feed's name (segments.create_feed)")
    parser.add_argument("destination", help="JSON file of each segment's members")
    parser.add_argument("--once", action="store_true", help="exit when the feed is drained")
    parser.add_argument("--batch", type=int, default=10000, help="rows per read_feed")
    args = parser.parse_args()
    members = run(args.dsn, args.feed, args.destination, once=args.once, batch=args.batch)
    if args.once:
        print(json.dumps({str(s): len(k) for s, k in sorted(members.items())}))


if __name__ == "__main__":
    main()
