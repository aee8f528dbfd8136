"""Heatmaps, layer curves, the HTML report and table exports."""
