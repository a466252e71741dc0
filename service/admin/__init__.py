"""The operator's side: the admin API, dead-letter queues, rate history and the dashboard.

Routes (`api`, `dead_letter_routes`) over the dead-letter queue operations
(`dead_letter_queues`) and the rate samples the dashboard draws (`rate_history`).

The package imports none of its modules: import the one you need.
"""

__all__ = ["api", "dead_letter_queues", "dead_letter_routes", "rate_history"]
