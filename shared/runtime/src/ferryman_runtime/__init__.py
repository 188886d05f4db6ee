"""Runtime glue shared by Ferryman's workers: Kafka I/O, dead letters, dedupe, metrics, hosting."""
