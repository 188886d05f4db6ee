"""Ferryman's LLM worker: chat requests from Kafka to LLM providers, streamed back to Kafka."""
