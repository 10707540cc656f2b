"""Observability, in one place: what the service tells about itself while it works.

- `logs`: log lines in JSON or text, with the ids of the event or command being handled.
- `tracing`: W3C trace context carried in message headers, through the OpenTelemetry API.
- `instruments`: the Prometheus counters and histograms the machinery updates.
- `metrics`: `GET /metrics`, those instruments plus gauges read at scrape time.
- `http`: HTTP requests counted, timed and traced, as ASGI middleware.
"""
