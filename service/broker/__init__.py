"""The link to RabbitMQ: connecting and failover, topology, consumers, routing, queue polling.

Addresses and TLS (`addresses`), the link that connects and fails over (`link`), the watchdog
that cuts a silent link (`watchdog`), the topology conveyor declares (`topology_plan`), topic
matching for the status record (`routing`) and queue depth polling (`queue_stats`).

The package imports none of its modules: import the one you need.
"""

__all__ = ["addresses", "link", "queue_stats", "routing", "topology_plan", "watchdog"]
