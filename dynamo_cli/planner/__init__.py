"""The planner: watches a deployment and scales its worker groups to hold latency targets."""
