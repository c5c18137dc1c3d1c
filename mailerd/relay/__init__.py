"""The relay: every committed outbox row out to each destination, at least once, in commit-safe order.

The hot log (``email_log``), the provider events (``email_events``), the campaign changes and the
erasures are the outbox: the relay reads what the writer and the webhooks already committed,
so nothing is written twice on the sending path. Modules, one job each:

- :mod:`~mailerd.relay.position`: txid snapshots, what is due and how a position advances (pure);
- :mod:`~mailerd.relay.records`: rows to records with stable ids (pure);
- :mod:`~mailerd.relay.reader`: one batch after a position, capped without skipping;
- :mod:`~mailerd.relay.stream`: one destination's loop (read, deliver, commit, retry, dead letters);
- :mod:`~mailerd.relay.leader`: one relay per cluster (advisory lock, takeover, fencing);
- :mod:`~mailerd.relay.destination`: the protocol a destination implements;
- :mod:`~mailerd.relay.kafka`, :mod:`~mailerd.relay.callbacks`: the destinations;
- :mod:`~mailerd.relay.destinations`: which ones the configuration asks for;
- :mod:`~mailerd.relay.retention`: partitions are not dropped before the relay passed them;
- :mod:`~mailerd.relay.operations`: ``mailerd relay status`` and ``mailerd relay replay``.

See docs/architecture.md ("The relay") and docs/events.md.
"""
