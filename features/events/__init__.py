"""The storefront's events: validated, deduplicated, appended durably, pushed online, exported to training.

One SQLite database (WAL, ``synchronous=FULL``) under the state directory holds every accepted
event, every rejected one with its reasons, the sessions attached to customers, and the customers
whose online state has yet to be rebuilt. The path of a batch:

1. each event is validated on its own; a bad one is kept in ``rejected`` with its reasons and the
   good ones go on;
2. the good ones are inserted in one transaction keyed by ``event_id`` (a repeat changes nothing)
   and the transaction commits (fsync) **before** the call is acknowledged: an acknowledged event
   survives a SIGKILL. The same transaction marks the customers it touches as ``dirty``;
3. :func:`publish` rebuilds each dirty customer's state from the log (purchases, basket) and
   writes it through the Feast push source ``customer_events_push`` into the online store, then
   clears the marks. Publishing holds the database's write lock, so two server workers never
   write an older state over a newer one; it is idempotent, so a crash between the commit and the
   push is repaired by the next publish (the service retries pending customers every second);
4. :func:`export_orders` writes the purchases as a raw order file that ingestion takes in like any
   export. Its invoice is the event's ``order_id`` (or one derived from the event), and ingestion
   identifies a line by invoice, product, quantity, price and customer, so the same order arriving
   later in the shop's own export is recognised and not counted twice.

A ``session_id`` seen without a customer (a shopper before login) is attached to the customer of
the first event that carries both; its earlier and later events then count as that customer's.
"""

from patron.features.events.log import AppendResult, EventLog
from patron.features.events.schema import MAX_BATCH, PUSH_SOURCE, RECENT_VIEW, Event, Verdict, order_key, validate
from patron.features.events.state import Fresh, apply_purchases, customer_state, publish, state_frame

__all__ = ["MAX_BATCH", "PUSH_SOURCE", "RECENT_VIEW", "AppendResult", "Event", "EventLog", "Fresh", "Verdict",
           "apply_purchases", "customer_state", "order_key", "publish", "state_frame", "validate"]
