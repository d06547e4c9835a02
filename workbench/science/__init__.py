"""Residual science tools: gradient flow, lesion studies, degradation checks."""
