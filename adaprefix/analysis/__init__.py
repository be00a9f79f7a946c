"""Analysis of trained adapters (gate statistics, plots). Nothing in the core imports this package."""
