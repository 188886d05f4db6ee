"""Dataref resolution: chat messages may name objects of the tenant's storage
(`{"type": "dataref", ...}` parts); the worker asks the storage_worker for them over Kafka
and gives the model their text, or the image, before any provider is called."""
