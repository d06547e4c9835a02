"""The Gradio workbench: one module per tab, each building its components and wiring its events."""
