"""Ferryman's storage worker: objects on local disk and S3-compatible stores over Kafka."""
