"""The link to RabbitMQ: connecting and failover, topology, consumers, routing, queue polling.

Addresses and TLS (`addresses`), the link that connects and fails over (`link`), what it
declares on each new connection (`declaring`) and the consumers it starts there
(`consumer_set`), the watchdog that cuts a silent link (`watchdog`), `conveyor topology`
(`topology_plan`), topic matching for the status record (`routing`) and queue depth polling
(`queue_stats`).

The package imports none of its modules: import the one you need.
"""

__all__ = [
    "addresses",
    "consumer_set",
    "declaring",
    "link",
    "queue_stats",
    "routing",
    "topology_plan",
    "watchdog",
]
