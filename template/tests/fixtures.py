"""Your test fixtures. The template's conftest.py loads this module, so your tests see what you
define here beside the template's own fixtures (`settings`, `client`, `publish`, `redis`, ...);
`copier update` never touches this file. For instance, the events topic of an upstream under the
test's own prefix:

    @pytest.fixture
    def order_events(settings: Settings) -> str:
        return ORDER_SERVICE.events_topic(settings)
"""
