"""Plain-text questions over MQTT, answered from the knowledge base and asset history."""
