"""API usage: recorded per token call, aggregated by day, token or model."""
