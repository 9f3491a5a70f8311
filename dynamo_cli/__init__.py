"""dynamo-cli: one command to bring up a distributed LLM serving system."""

__version__ = "0.1.0"
