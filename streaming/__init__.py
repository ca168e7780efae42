"""Events in motion: the event schema, log readers, the Kafka producer and worker, the dead-letter topic."""
