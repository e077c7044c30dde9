"""HTML reports: the compliance report and its SQL aggregation, the model report, rendering helpers."""
