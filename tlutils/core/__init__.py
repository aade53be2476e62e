"""The core layer: what any transfer-learning project needs. It imports nothing above it."""
