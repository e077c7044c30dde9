"""Tests of `maskjob ingest`: video files and live streams into the inbox."""
