"""ricardo: a cost-aware gateway for LLM inference across heterogeneous hardware."""

__version__ = "0.1.0"
