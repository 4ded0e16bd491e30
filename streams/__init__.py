"""The Kafka edge: topics, the Faust app with its agents and timers, and the producer API."""
