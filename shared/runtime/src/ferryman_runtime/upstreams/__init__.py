"""What every worker needs around the services it calls (LLM deployments, MCP servers,
storage backends): quotas, Retry-After cooldowns, HTTP status → error mapping, per-upstream
stats and the health monitor."""
