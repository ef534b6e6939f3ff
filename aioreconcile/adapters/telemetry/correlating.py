"""Log records carry the ids of the span that was current when they were written, so a log
line leads to its trace in Jaeger and back (the JSON formatter prints every extra field)."""

import logging

from opentelemetry import trace


class TraceContextFilter(logging.Filter):
    """Adds ``trace_id`` (32 hex) and ``span_id`` (16 hex) when a valid span is current.

    It sits on handlers, not on a logger: a logger's filters see only records created on that
    very logger, a handler's see every record that propagates to it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid and not hasattr(record, "trace_id"):
            record.trace_id = format(span_context.trace_id, "032x")
            record.span_id = format(span_context.span_id, "016x")
        return True


def install_log_correlation(logger: logging.Logger | None = None) -> None:
    """Attach one ``TraceContextFilter`` to each handler of ``logger`` (the root by default).

    Call it after ``aioreconcile.logs.configure``, which replaces the root's handlers.
    Installing twice adds nothing.
    """
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, TraceContextFilter) for f in handler.filters):
            handler.addFilter(TraceContextFilter())
