"""Classification probes, speaker-verification back-ends and metrics."""
