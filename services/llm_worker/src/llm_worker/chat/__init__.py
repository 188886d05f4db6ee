"""A chat request from routing to its last reply event: the service, its calls, retries,
stream guards and the fold that makes the non-streaming result."""
