"""Alerts: tell the site when a night fails or compliance is low (Airflow notifiers, SMTP by default)."""
