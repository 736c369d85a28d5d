"""SmartProxy: a self-hosted AI gateway (free-first, price-aware routing with quotas and failover)."""

__version__ = "0.1.0"
