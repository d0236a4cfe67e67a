"""How the bench measures: deployments, load generators, steps and ramps, CPU, the report."""
