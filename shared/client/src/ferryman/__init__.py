"""Ferryman's client distribution: the event contract (`ferryman.contracts`), the Python
client (`ferryman.client.FerrymanClient`), Kafka connection settings
(`ferryman.kafka_config.KafkaConnection`) and the `ferryman` command line."""
