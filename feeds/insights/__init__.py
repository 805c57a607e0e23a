"""What feeds do to members and creators: the impact preview, run metrics, the creator report,
trends across runs and their charts."""
