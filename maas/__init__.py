"""maas: the shared package behind train/, tune/ and serve/ (configs, data, models, registry)."""

__version__ = "0.1.0"
