"""Built-in interventions: the baselines every compression paper reports."""
