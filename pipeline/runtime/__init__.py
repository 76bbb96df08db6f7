"""The runtime between the contracts and the agents, gateways and sinks: the Kafka client factory,
the producer, the consume -> process -> produce -> commit loop and the batch-step contract."""
