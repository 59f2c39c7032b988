"""Training recipes (YAML), installed as package data."""
