"""listen tests."""
