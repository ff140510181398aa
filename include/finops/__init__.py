"""Cost of explainer runs from the resources they reserved and used (FOCUS-aligned rows)."""
