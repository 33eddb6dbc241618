"""CounterFact for lmcompose."""
