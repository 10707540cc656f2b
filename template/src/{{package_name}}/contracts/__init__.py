"""Contracts: payloads of the events this service consumes and publishes, a module per upstream.

Event types carry their version (`persona.renamed.v2`); a new version is a new model, and an
upcaster
in `projections/` turns the old one into it.
"""
