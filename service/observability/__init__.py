"""What the process tells about itself: metrics, logs, tracing and event loop lag.

Prometheus metrics (`metrics`), structured logs (`logs`), the tracing switch (`tracing`) and
the OpenTelemetry spans it turns on (`otel_spans`), and event loop lag (`loop_lag`).

The package imports none of its modules: import the one you need.
"""

__all__ = ["logs", "loop_lag", "metrics", "otel_spans", "tracing"]
