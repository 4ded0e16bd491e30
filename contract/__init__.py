"""The event contract at the bottom of the layers: what producers send, how it is
validated, and the units every stored number is in. It imports nothing of the project."""
