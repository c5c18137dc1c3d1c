"""mailerd: an asyncio email campaign delivery daemon."""

__version__ = "0.1.0"
