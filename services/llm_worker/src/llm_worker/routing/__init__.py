"""Where a request goes: the routing file (routes of deployments), the routing table built
from it, capabilities, and the per-request attempt plan."""
