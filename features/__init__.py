"""The Feast feature repository, context lookup at scoring, point-in-time training frames."""
