"""The embedded local runtime: replicas on one machine, scheduled by one asyncio controller."""
