"""Everything that speaks Kafka: connection options, topic creation, the event sink, and the
consumed ``Record`` with one way to read a topic to its end."""
