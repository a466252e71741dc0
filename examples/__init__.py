"""Example handlers and subscriptions used by `make run`."""
