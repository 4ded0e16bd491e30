"""Event contracts, topics, the Faust app and the producer API."""
