"""The fidelity gate: a run's explanations must be faithful enough before they are published."""
