"""Stateful logic of the tracker. Pure modules here import no Faust, Redis or aiokafka."""
