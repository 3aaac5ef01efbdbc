#!/usr/bin/env python3
"""Drives the simulator's ledger and webhook endpoints with Stripe's official Python SDK.

A client nobody here wrote: if it can list balance transactions, manage webhook endpoints
and verify a delivered event, the simulator speaks Stripe closely enough. Not part of CI.

    pip install stripe
    cargo run -- stripe-sim --activity-per-hour 60 --clock-speed 60 --keys-file /tmp/sim.json &
    scripts/sim-sdk-check.py --keys-file /tmp/sim.json [--base http://127.0.0.1:12111]

Exits 0 when every step worked, 1 otherwise.
"""

import argparse
import http.server
import json
import queue
import sys
import threading

import stripe


def receiver():
    """A local webhook endpoint; deliveries land in the returned queue."""
    deliveries = queue.Queue()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            deliveries.put((body, self.headers.get("stripe-signature", "")))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}/hook", deliveries, server


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys-file", required=True)
    parser.add_argument("--base", default="http://127.0.0.1:12111")
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for an event")
    args = parser.parse_args()

    with open(args.keys_file) as f:
        keys = json.load(f)
    platform = keys["platforms"][0]
    stripe.api_base = args.base
    stripe.api_key = platform["key"]
    print(f"stripe-python {stripe.VERSION} against {args.base}")

    account = platform["accounts"][0]
    txns = stripe.BalanceTransaction.list(limit=3, stripe_account=account)
    print(f"balance transactions of {account}: {len(txns.data)} shown, has_more={txns.has_more}")
    for t in txns.data:
        print(f"  {t.id} {t.type:<22} {t.reporting_category:<16} {t.amount:>10} {t.currency} {t.status}")
    if txns.data:
        again = stripe.BalanceTransaction.retrieve(txns.data[0].id, stripe_account=account)
        assert again.id == txns.data[0].id
    walked = sum(1 for _ in stripe.BalanceTransaction.list(limit=100, stripe_account=account).auto_paging_iter())
    print(f"auto-paged every transaction of {account}: {walked}")

    url, deliveries, server = receiver()
    endpoint = stripe.WebhookEndpoint.create(url=url, enabled_events=["*"], connect=True)
    print(f"created {endpoint.id} ({endpoint.status}), secret starts {endpoint.secret[:6]}")
    listed = [e.id for e in stripe.WebhookEndpoint.list(limit=10).data]
    assert endpoint.id in listed, listed
    fetched = stripe.WebhookEndpoint.retrieve(endpoint.id)
    assert getattr(fetched, "secret", None) is None, "the secret is only shown on create"
    print(f"listed {len(listed)} endpoint(s); retrieved {fetched.id} without its secret")

    ok = False
    try:
        body, signature = deliveries.get(timeout=args.wait)
        event = stripe.Webhook.construct_event(body, signature, endpoint.secret)
        print(f"verified {event.id}: {event.type} for {event.account} (created {event.created})")
        try:
            stripe.Webhook.construct_event(body, signature, "whsec_wrong")
            print("a wrong secret verified: that is a bug")
        except stripe.SignatureVerificationError:
            print("a wrong secret is refused")
            ok = True
    except queue.Empty:
        print(f"no event within {args.wait} s: is --activity-per-hour above 0?")

    deleted = stripe.WebhookEndpoint.delete(endpoint.id)
    print(f"deleted {deleted.id}: {deleted.deleted}")
    server.shutdown()
    return 0 if ok and deleted.deleted else 1


if __name__ == "__main__":
    sys.exit(main())
