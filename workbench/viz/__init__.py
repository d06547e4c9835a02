"""Plotly figure builders: rows in, figure out; nothing here reads the store."""
