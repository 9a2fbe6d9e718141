"""CondInst Studio annotation app: workspace persistence, export and UI."""
