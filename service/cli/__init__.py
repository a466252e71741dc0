"""The `conveyor` command line: `serve`, `topology`, and the client commands over HTTP.

The entry point (`main`), the client commands (`client`, `publish`, `dead_letters`), their
HTTP client (`http_client`) and the text they print (`text`).

The package imports none of its modules: import the one you need.
"""

__all__ = ["client", "dead_letters", "http_client", "main", "publish", "text"]
