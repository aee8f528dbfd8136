"""Corpus manifests: schema, validation, importers, sampling, splits, trial lists, the demo corpus."""
