"""The quality report: fidelity, utility and privacy of a generator, measured on held-out real data."""
