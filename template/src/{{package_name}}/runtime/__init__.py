"""Template-owned machinery: Kafka and Redis plumbing, the projector, health and readiness.

`copier update` keeps this package current; your code lives in `contracts/`, `projections/` and
`api/`, which the template only creates once.
"""
