"""The HTTP ingress: CloudEvents in, problem+json or 202 out, and the routes beside it.

Parsing (`cloudevents`), admission by bytes in flight (`admission`, `memory`), the ingress
routes (`ingress`), idempotency (`idempotency`), answers and problems (`answers`, `problems`),
tokens (`auth`), event statuses (`status_book` over the store, `status_route` over HTTP),
`health`, and the metrics and OpenAPI routes (`metrics_route`, `openapi_route`).

The package imports none of its modules: import the one you need.
"""

__all__ = [
    "admission",
    "answers",
    "auth",
    "cloudevents",
    "health",
    "idempotency",
    "ingress",
    "memory",
    "metrics_route",
    "openapi_route",
    "problems",
    "status_book",
    "status_route",
]
