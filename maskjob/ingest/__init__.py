"""Ingestion: frames from video files and live camera streams into the dated inbox."""
