"""A read model over upstream Fact Events, served over HTTP."""
